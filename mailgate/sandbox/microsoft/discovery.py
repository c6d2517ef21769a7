"""Entra's discovery documents: OpenID configuration, signing keys, MSAL's instance discovery, the error lookup page."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from mailgate.sandbox import pages
from mailgate.sandbox.microsoft.errors import MESSAGES, AADError, Replies, json_response
from mailgate.sandbox.microsoft.lookup import resolve_tenant

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState


class Discovery:
    """GET endpoints that describe the sandbox's Microsoft authority; they change no state."""

    def __init__(self, state: SandboxState, replies: Replies) -> None:
        self.state = state
        self.replies = replies

    def openid_configuration(self, request: Request, segment: str) -> Response:
        try:
            tenant = resolve_tenant(self.state, segment)
        except AADError as exc:
            return self.replies.json_error(request, exc)
        base = request.host_url.rstrip("/")
        issuer_tenant = tenant["id"] or "{tenantid}"
        body = {
            "token_endpoint": f"{base}/{segment}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/{segment}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/{segment}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{segment}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{segment}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": f"{base}/{segment}/kerberos",
            "tenant_region_scope": "EU" if tenant["id"] else None,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return json_response(body)

    def keys(self, request: Request) -> Response:
        return json_response(self.state.signing_key.jwks())

    def instance_discovery(self, request: Request) -> Response:
        """MSAL's instance discovery: the tenant discovery endpoint on this very server.

        MSAL sends `authorization_endpoint` without the port, so the answer is built from the
        host the request reached, with the tenant taken from that endpoint's path.
        """
        endpoint = request.args.get("authorization_endpoint", "")
        parts = urlsplit(endpoint)
        segments = [s for s in parts.path.split("/") if s]
        if not parts.netloc or not segments:
            return json_response(
                {
                    "error": "invalid_instance",
                    "error_description": "AADSTS50049: Unknown or invalid instance.",
                },
                400,
            )
        base = request.host_url.rstrip("/")
        host = urlsplit(base).netloc
        return json_response(
            {
                "tenant_discovery_endpoint": f"{base}/{segments[0]}/v2.0/.well-known/openid-configuration",
                "api-version": request.args.get("api-version", "1.1"),
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            }
        )

    def error_lookup(self, request: Request) -> Response:
        try:
            code = int(request.args.get("code", ""))
        except ValueError:
            code = 0
        text = MESSAGES.get(code, "Unknown error code.")
        return Response(
            pages.page("Error lookup", f"<h1>AADSTS{code}</h1><p>{pages.escape(text)}</p>"),
            content_type="text/html; charset=utf-8",
        )
