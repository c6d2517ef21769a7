"""One error shape for the whole REST API: RFC 9457 problem details (application/problem+json).

Every answer with a 4xx/5xx status is a JSON object with `type`, `title`, `status` and `detail`,
plus `errors` mapping each failing field's path (`to`, `attachments[0].content_base64`, a header
name) to what is wrong with it. Views keep returning `{"detail": ..., "errors": ...}`; the API's
renderer (ProblemAPI.create_response) completes the shape, so no way out of the API differs.
"""

from __future__ import annotations

import difflib
from http import HTTPStatus
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import ValidationError

PROBLEM_TYPE = "about:blank"  # RFC 9457 §4.2.1: the status code's own meaning
CONTENT_TYPE = "application/problem+json"
# Where the field is, as pydantic reports it: ("body", "payload", "attachments", 0, "filename").
_LOCATION_ROOTS = {"body", "query", "path", "header", "cookie", "form", "file"}


def field_path(loc: list[Any] | tuple[Any, ...]) -> str:
    """`attachments[0].filename` for pydantic's ("body", "payload", "attachments", 0, "filename")."""
    parts = list(loc)
    if parts and parts[0] in _LOCATION_ROOTS:
        parts = parts[1:]
        if parts and parts[0] in ("payload", "data", "body"):
            parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "body"


def _parent_and_name(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition(".")
    return parent, name


def _unknown_field(path: str, missing: list[str], known: set[str]) -> str:
    """The message for an unknown field, suggesting a required field missing beside it (the
    likely intended one: `content` for `content_base64`), else the closest known name."""
    parent, name = _parent_and_name(path)
    beside = [n for p, n in map(_parent_and_name, missing) if p == parent]
    close = [n for n in beside if n.startswith(name) or name.startswith(n)]
    close = close or difflib.get_close_matches(name, beside, n=1, cutoff=0.3)
    close = close or difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {name!r}: not part of this request{hint}"


def validation_problem(
    api: NinjaAPI, request: HttpRequest, exc: ValidationError | type[ValidationError]
) -> HttpResponse:
    """422 naming every failing field by its path, unknown fields included."""
    errors: dict[str, str] = {}
    found = list(getattr(exc, "errors", []))
    missing = [field_path(e.get("loc", ())) for e in found if e.get("type") == "missing"]
    known = _known_fields(api)
    for error in found:
        path = field_path(error.get("loc", ()))
        if error.get("type") == "extra_forbidden":
            message = _unknown_field(path, missing, known)
        else:
            message = str(error.get("msg", "is not valid"))
        errors.setdefault(path, message)
    unknown = [p for p, m in errors.items() if m.startswith("unknown field")]
    if unknown:
        detail = "Unknown field" + ("s " if len(unknown) > 1 else " ") + ", ".join(unknown)
        detail += ": they are refused rather than ignored; see /api/v1/docs for the fields."
    else:
        detail = "; ".join(f"{path}: {message}" for path, message in errors.items())
    return api.create_response(
        request,
        {"title": "The request is not valid", "detail": detail, "errors": errors},
        status=422,
    )


def _known_fields(api: NinjaAPI) -> set[str]:
    """Every property name of the API's request schemas (for 'did you mean')."""
    names: set[str] = set()
    for schema in api.get_openapi_schema().get("components", {}).get("schemas", {}).values():
        names.update(schema.get("properties", {}))
    return names


def as_problem(data: Any, status: int) -> dict[str, Any]:
    """The body completed into RFC 9457 problem details."""
    body = dict(data) if isinstance(data, dict) else {"detail": data}
    # A response schema fills absent ones with "" (ErrorOut's defaults): those count as absent.
    body["type"] = body.get("type") or PROBLEM_TYPE
    body["title"] = body.get("title") or _phrase(status)
    body["status"] = status
    detail = body.get("detail")
    if not isinstance(detail, str):
        body["detail"] = str(detail) if detail is not None else body["title"]
    body.setdefault("errors", {})
    return body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ProblemAPI(NinjaAPI):
    """A NinjaAPI whose error answers are all problem details."""

    def create_response(
        self,
        request: HttpRequest,
        data: Any,
        *,
        status: int | None = None,
        temporal_response: HttpResponse | None = None,
    ) -> HttpResponse:
        code = temporal_response.status_code if temporal_response else status
        if code is None or code < 400:
            return super().create_response(
                request, data, status=status, temporal_response=temporal_response
            )
        response = super().create_response(
            request, as_problem(data, code), status=status, temporal_response=temporal_response
        )
        response["Content-Type"] = CONTENT_TYPE
        return response
