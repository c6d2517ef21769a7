"""What a request names, checked as Entra checks it: the tenant segment, the client, the redirect URI, the pending sign-in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from mailgate.sandbox.entra import MSA_TENANT_ID
from mailgate.sandbox.microsoft.errors import AADError, Replies

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState


def resolve_tenant(state: SandboxState, segment: str) -> dict[str, Any]:
    """`common`, `organizations`, `consumers`, a tenant GUID or a verified domain."""
    lowered = segment.lower()
    if lowered in ("common", "organizations", "consumers"):
        return {"id": None, "kind": lowered, "label": lowered}
    tenant = state.directory.tenant(lowered)
    if tenant is None:
        raise AADError(90002, "invalid_request", tenant=segment)
    kind = "consumers" if tenant["id"] == MSA_TENANT_ID else "tenant"
    return {"id": tenant["id"], "kind": kind, "label": segment}


def find_app(state: SandboxState, client_id: str | None, tenant: dict[str, Any]) -> dict[str, Any]:
    """The app registration `client_id` names, as seen from `tenant` (else the AADSTS error)."""
    if not client_id:
        raise AADError(900144, "invalid_request", name="client_id")
    app = state.apps.app(client_id)
    visible = app is not None
    if app is not None and tenant["kind"] == "tenant" and tenant["id"] != app["tenant_id"]:
        # A single-tenant app does not exist in other directories; a multitenant one gets
        # a service principal there only through consent, which the sandbox models as always.
        visible = app["audience"] != "AzureADMyOrg"
    if not visible or app is None:
        raise AADError(
            700016,
            "unauthorized_client",
            client_id=client_id,
            tenant=tenant["label"],
        )
    if tenant["kind"] in ("common", "organizations") and app["audience"] == "AzureADMyOrg":
        raise AADError(50194, "invalid_request", client_id=app["client_id"], app_name=app["name"])
    if tenant["kind"] == "consumers" and app["audience"] in (
        "AzureADMyOrg",
        "AzureADMultipleOrgs",
    ):
        raise AADError(9002332, "invalid_request", client_id=app["client_id"], app_name=app["name"])
    return app


def redirect_matches(registered: str, sent: str) -> bool:
    """Exact, case-sensitive match; the port is ignored for http://localhost and 127.0.0.1."""
    if registered == sent:
        return True
    a, b = urlsplit(registered), urlsplit(sent)
    loopback = ("localhost", "127.0.0.1")
    return (
        a.scheme == b.scheme == "http"
        and a.hostname in loopback
        and a.hostname == b.hostname
        and a.path == b.path
        and a.query == b.query
    )


def pending_request(
    state: SandboxState, replies: Replies, request: Request
) -> tuple[str, dict[str, Any], dict[str, Any]] | Response:
    """The authorization request a sign-in or consent form belongs to, and its app; else the error page."""
    ctx_id = request.form.get("ctx", "")
    ctx = state.pending.get(ctx_id)
    app = state.apps.app(ctx["client_id"]) if ctx else None
    if ctx is None or app is None:
        return replies.error_page(request, AADError(90014, "invalid_request", name="ctx"))
    return ctx_id, ctx, app
