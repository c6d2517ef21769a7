"""Checking the parameters of control operations; a bad one raises `ControlError` naming it."""

from __future__ import annotations

from typing import Any


class ControlError(ValueError):
    """Bad input to a control operation; `field` names the parameter at fault."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def lower(address: str) -> str:
    """An address as the sandbox keys it: stripped and lower-cased."""
    return address.strip().lower()


def require(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise ControlError(name, f"is required (add `{name}` to the request)")
    return value


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "1",
        "on",
        "false",
        "no",
        "0",
        "off",
    ):
        return value.lower() in ("true", "yes", "1", "on")
    raise ControlError(name, f"must be true or false, not {value!r}")


def as_number(name: str, value: Any, *, minimum: float = 0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ControlError(name, f"must be a number, not {value!r}") from None
    if number < minimum:
        raise ControlError(name, f"must be at least {minimum:g}, not {number:g}")
    return number


def as_list(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ControlError(name, "must be a list of strings (or one space/comma-separated string)")
