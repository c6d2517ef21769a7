from typing import Any

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "mailgate.audit"
    label = "audit"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        user_logged_in.connect(_signed_in, dispatch_uid="audit-signed-in")
        user_login_failed.connect(_sign_in_failed, dispatch_uid="audit-sign-in-failed")


def _address(request: Any) -> str:
    return str(getattr(request, "META", {}).get("REMOTE_ADDR", "")) if request else ""


def _signed_in(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    from mailgate.audit.log import record

    name = str(getattr(user, "username", ""))
    record("sign_in", actor=name, subject=name, address=_address(request))


def _sign_in_failed(
    sender: Any, credentials: dict[str, Any] | None = None, request: Any = None, **kwargs: Any
) -> None:
    from mailgate.audit.log import record

    # Django's credentials dict has the password as stars already; only the username is kept.
    name = str((credentials or {}).get("username", ""))[:150]
    record("sign_in_failed", subject=name, address=_address(request))
