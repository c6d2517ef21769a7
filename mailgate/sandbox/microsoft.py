"""The Microsoft identity platform v2.0 endpoints: authorize (+ sign-in and consent pages), token, discovery, keys.

Paths, parameters, response fields and error shapes follow ../shared/reference/protocol.md §1, §2 and §7.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from mailgate.sandbox import pages
from mailgate.sandbox.faults import apply_faults
from mailgate.sandbox.state import (
    CODE_LIFETIME,
    MSA_TENANT_ID,
    REFRESH_TOKEN_MAX_INACTIVE,
    SandboxState,
    digest,
    random_token,
)

OIDC_SCOPES = ("openid", "profile", "email", "offline_access")

# Resource identifiers (application ID URIs and app IDs) the sandbox knows, with the audience of
# the access tokens it issues for them.
# Reference: https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
RESOURCES = {
    "https://outlook.office.com": ("outlook", "https://outlook.office.com"),
    "https://outlook.office365.com": ("outlook", "https://outlook.office365.com"),
    "00000002-0000-0ff1-ce00-000000000000": ("outlook", "https://outlook.office.com"),
    "https://graph.microsoft.com": ("graph", "https://graph.microsoft.com"),
    "00000003-0000-0000-c000-000000000000": ("graph", "https://graph.microsoft.com"),
}
PERMISSIONS = {
    "outlook": (
        "SMTP.Send",
        "IMAP.AccessAsUser.All",
        "POP.AccessAsUser.All",
        "EWS.AccessAsUser.All",
    ),
    "graph": ("User.Read", "Mail.Send", "Mail.Read", "Mail.ReadWrite"),
}
APP_ROLES = {
    "outlook": ("SMTP.SendAsApp", "IMAP.AccessAsApp", "POP.AccessAsApp"),
    "graph": ("Mail.Send",),
}
RESOURCE_URL = {"outlook": "https://outlook.office.com", "graph": "https://graph.microsoft.com"}

# Texts of the AADSTS codes the sandbox produces (S6 wording, or the real-world text where
# protocol.md §2 records one). Reference: https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
MESSAGES = {
    50011: "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.",
    500113: "No reply address is registered for the application.",
    900971: "No reply address provided.",
    50194: "Application '{client_id}'({app_name}) isn't configured as a multitenant application. Usage of the /common endpoint isn't supported for such applications created after '10/15/2018'. Use a tenant-specific endpoint or configure the application to be multitenant.",
    700016: "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
    90002: "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.",
    7000215: "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
    7000222: "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    700025: "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
    700027: "Client assertion failed signature validation.",
    65001: "The user or administrator has not consented to use the application with ID '{client_id}' named '{app_name}'. Send an interactive authorization request for this user and resource.",
    70000: "The request was denied because one or more scopes requested are unauthorized or expired. The user must first sign in and grant the client application access to the requested scope.",
    65004: "User declined to consent to access the app.",
    50105: "Your administrator has configured the application {app_name} ('{client_id}') to block users unless they are specifically granted ('assigned') access to the application. The signed in user '{user}' is blocked because they are not a direct member of a group with access, nor had access directly assigned by an administrator. Please contact your administrator to assign access to this application.",
    50126: "Error validating credentials due to invalid username or password.",
    50034: "The user account {user} does not exist in the {tenant} directory. To sign into this application, the account must be added to the directory.",
    50057: "The user account is disabled.",
    50020: "User account '{user}' from identity provider '{idp}' does not exist in tenant '{tenant}' and cannot access the application '{client_id}'({app_name}) in that tenant. The account needs to be added as an external user in the tenant first. Sign out and sign in again with a different Azure Active Directory user account.",
    54005: "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
    70008: "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
    700082: "The refresh token has expired due to inactivity. The token was issued on {issued} and was inactive for 90.00:00:00.",
    50173: "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{issued}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{valid_from}'.",
    501481: "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
    9002313: "Invalid request. Request is malformed or invalid.",
    70011: "The provided value for the input parameter 'scope' isn't valid. The scope {scope} isn't valid.",
    28000: "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid.",
    700022: "The provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid.",
    500011: "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
    1002012: "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
    53003: "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
    50076: "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '{resource}'.",
    9002332: "Application '{client_id}'({app_name}) is configured for use by Azure Active Directory users only. Please do not use the /consumers endpoint to serve this request.",
    9001023: "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
    900144: "The request body must contain the following parameter: '{name}'.",
    70003: "The app requested an unsupported grant type '{grant_type}'.",
    70007: "The application '{app_name}' asked for response_mode '{mode}', which is not supported.",
    700054: "Response_type 'id_token' is not enabled for the application.",
    50058: "A silent sign-in request was sent but no user is signed in.",
    50000: "There was an error issuing a token or an issue with our sign-in service.",
    90033: "A transient error has occurred. Please try again.",
    90014: "The required field '{name}' is missing from the credential. Ensure that you have all the necessary parameters for the login request.",
    900561: "The endpoint only accepts {valid_verbs} requests. Received a {invalid_verb} request.",
}


class AADError(Exception):
    """An error answered in Entra's shape: token JSON, a redirect, or the error page."""

    def __init__(self, code: int, error: str, status: int = 400, **fields: Any) -> None:
        template = MESSAGES[code]
        try:
            message = template.format(**fields)
        except (KeyError, IndexError):
            message = template
        super().__init__(f"AADSTS{code}: {message}")
        self.code = code
        self.error = error
        self.status = status
        self.message = message


@dataclass
class Scopes:
    """A parsed `scope` parameter: OIDC scopes, and per resource its audience and permissions."""

    oidc: list[str] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def first_resource(self) -> str | None:
        return next(iter(self.resources), None)


def parse_scopes(raw: str, app: dict[str, Any], tenant_label: str) -> Scopes:
    """Split a scope string; unknown resource → AADSTS500011, unknown permission → AADSTS70011."""
    result = Scopes()
    for item in raw.split():
        if item.lower() in OIDC_SCOPES:
            if item.lower() not in result.oidc:
                result.oidc.append(item.lower())
            continue
        if "://" in item or (item.count("-") == 4 and "/" in item):
            resource_url, _, perm = item.rpartition("/")
        else:
            # "if the resource identifier is omitted in the scope parameter, the resource is assumed
            # to be Microsoft Graph". Reference: https://learn.microsoft.com/en-us/entra/identity-platform/scopes-oidc
            resource_url, perm = "https://graph.microsoft.com", item
        known = RESOURCES.get(resource_url.rstrip("/").lower()) or RESOURCES.get(
            resource_url.rstrip("/")
        )
        if known is None:
            raise AADError(500011, "invalid_resource", resource=resource_url, tenant=tenant_label)
        key, audience = known
        entry = result.resources.setdefault(key, {"aud": audience, "perms": [], "default": False})
        if perm == ".default":
            entry["default"] = True
            configured = [p for p in app["permissions"] if p in PERMISSIONS[key]]
            entry["perms"].extend(p for p in configured if p not in entry["perms"])
            continue
        canonical = next((p for p in PERMISSIONS[key] if p.lower() == perm.lower()), None)
        if canonical is None:
            raise AADError(70011, "invalid_scope", scope=item)
        if canonical not in entry["perms"]:
            entry["perms"].append(canonical)
    return result


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _redirect_matches(registered: str, sent: str) -> bool:
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


class MicrosoftIdentity:
    """Handlers for the Microsoft identity platform paths, over a `SandboxState`."""

    SESSION_COOKIE = "ESTSAUTH"

    def __init__(self, state: SandboxState, stopping: threading.Event) -> None:
        self.state = state
        self.stopping = stopping

    # -- error plumbing ----------------------------------------------------------------------

    def _error_fields(self, request: Request, exc: AADError) -> dict[str, Any]:
        now = self.state.now()
        trace_id = str(uuid.uuid4())
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        stamp = _timestamp(now)
        return {
            "error": exc.error,
            "error_description": (
                f"AADSTS{exc.code}: {exc.message}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [exc.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{request.host_url}error?code={exc.code}",
        }

    def json_error(self, request: Request, exc: AADError, *, basic_auth: bool = False) -> Response:
        self.state.count(f"aadsts_{exc.code}")
        response = Response(
            json.dumps(self._error_fields(request, exc)),
            status=exc.status,
            content_type="application/json; charset=utf-8",
        )
        if exc.status == 401 and basic_auth:
            response.headers["WWW-Authenticate"] = 'Basic realm="login.microsoftonline.com"'
        return response

    def error_page(self, request: Request, exc: AADError) -> Response:
        self.state.count(f"aadsts_{exc.code}")
        fields = self._error_fields(request, exc)
        html = pages.aad_error(
            code=exc.code,
            message=exc.message,
            trace_id=fields["trace_id"],
            correlation_id=fields["correlation_id"],
            timestamp=fields["timestamp"],
        )
        return Response(html, status=400, content_type="text/html; charset=utf-8")

    def _redirect(self, ctx: dict[str, Any], fields: dict[str, str]) -> Response:
        if ctx.get("state") is not None:
            fields["state"] = ctx["state"]
        uri = ctx["redirect_uri"]
        mode = ctx["response_mode"]
        if mode == "form_post":
            return Response(pages.form_post(uri, fields), content_type="text/html; charset=utf-8")
        # "Redirect URIs not configured with a path segment are returned with a trailing slash".
        # Reference: https://learn.microsoft.com/en-us/entra/identity-platform/reply-url
        if not urlsplit(uri).path:
            uri += "/"
        separator = "#" if mode == "fragment" else ("&" if "?" in uri else "?")
        response = Response(status=302)
        response.headers["Location"] = uri + separator + urlencode(fields)
        return response

    def redirect_error(self, request: Request, ctx: dict[str, Any], exc: AADError) -> Response:
        self.state.count(f"aadsts_{exc.code}")
        fields = self._error_fields(request, exc)
        return self._redirect(
            ctx, {"error": exc.error, "error_description": fields["error_description"]}
        )

    # -- tenants and apps --------------------------------------------------------------------

    def resolve_tenant(self, segment: str) -> dict[str, Any]:
        """`common`, `organizations`, `consumers`, a tenant GUID or a verified domain."""
        lowered = segment.lower()
        if lowered in ("common", "organizations", "consumers"):
            return {"id": None, "kind": lowered, "label": lowered}
        tenant = self.state.tenant(lowered)
        if tenant is None:
            raise AADError(90002, "invalid_request", tenant=segment)
        kind = "consumers" if tenant["id"] == MSA_TENANT_ID else "tenant"
        return {"id": tenant["id"], "kind": kind, "label": segment}

    def find_app(
        self, client_id: str | None, tenant: dict[str, Any], *, token: bool
    ) -> dict[str, Any]:
        if not client_id:
            raise AADError(900144, "invalid_request", name="client_id")
        app = self.state.app(client_id)
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
            raise AADError(
                50194, "invalid_request", client_id=app["client_id"], app_name=app["name"]
            )
        if tenant["kind"] == "consumers" and app["audience"] in (
            "AzureADMyOrg",
            "AzureADMultipleOrgs",
        ):
            raise AADError(
                9002332, "invalid_request", client_id=app["client_id"], app_name=app["name"]
            )
        return app

    def consented(self, app: dict[str, Any], user: dict[str, Any]) -> set[str]:
        """Scope keys the user (or an admin for the user's tenant) consented to for this app."""
        with self.state.lock:
            keys = set(self.state.data["consents"].get(f"{user['oid']}|{app['client_id']}", []))
        if user["tenant_id"] in app["admin_consent_tenants"]:
            for perm in app["permissions"]:
                if perm in OIDC_SCOPES:
                    keys.add(perm)
                for key, perms in PERMISSIONS.items():
                    if perm in perms:
                        keys.add(f"{key}:{perm}")
        return keys

    @staticmethod
    def requested_keys(scopes: Scopes) -> set[str]:
        keys = set(scopes.oidc)
        for key, entry in scopes.resources.items():
            keys.update(f"{key}:{perm}" for perm in entry["perms"])
        return keys

    # -- discovery ---------------------------------------------------------------------------

    def openid_configuration(self, request: Request, segment: str) -> Response:
        try:
            tenant = self.resolve_tenant(segment)
        except AADError as exc:
            return self.json_error(request, exc)
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
        return _json(body)

    def keys(self, request: Request) -> Response:
        return _json(self.state.signing_key.jwks())

    def instance_discovery(self, request: Request) -> Response:
        """MSAL's instance discovery: the tenant discovery endpoint on this very server.

        MSAL sends `authorization_endpoint` without the port, so the answer is built from the
        host the request reached, with the tenant taken from that endpoint's path.
        """
        endpoint = request.args.get("authorization_endpoint", "")
        parts = urlsplit(endpoint)
        segments = [s for s in parts.path.split("/") if s]
        if not parts.netloc or not segments:
            return _json(
                {
                    "error": "invalid_instance",
                    "error_description": "AADSTS50049: Unknown or invalid instance.",
                },
                400,
            )
        base = request.host_url.rstrip("/")
        host = urlsplit(base).netloc
        return _json(
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

    # -- authorize ---------------------------------------------------------------------------

    def authorize(self, request: Request, segment: str) -> Response:
        params = request.values
        # Errors about the tenant, the client or the redirect URI are shown on a page: never
        # redirect to an unverified URI (RFC 6749 §4.1.2.1).
        try:
            tenant = self.resolve_tenant(segment)
            app = self.find_app(params.get("client_id"), tenant, token=False)
            redirect_uri = params.get("redirect_uri")
            if not app["redirect_uris"]:
                raise AADError(500113, "invalid_request")
            if not redirect_uri:
                raise AADError(900971, "invalid_request")
            if not any(_redirect_matches(r, redirect_uri) for r in app["redirect_uris"]):
                raise AADError(
                    50011, "invalid_request", redirect_uri=redirect_uri, client_id=app["client_id"]
                )
        except AADError as exc:
            return self.error_page(request, exc)
        mode = params.get("response_mode") or "query"
        ctx: dict[str, Any] = {
            "tenant": tenant,
            "segment": segment,
            "client_id": app["client_id"],
            "redirect_uri": redirect_uri,
            "response_mode": mode if mode in ("query", "fragment", "form_post") else "query",
            "state": params.get("state"),
            "nonce": params.get("nonce"),
            "login_hint": params.get("login_hint", ""),
            "prompt": params.get("prompt", ""),
            "code_challenge": params.get("code_challenge"),
            "code_challenge_method": params.get("code_challenge_method") or "plain",
            "scope": params.get("scope", ""),
            "created": time.monotonic(),
        }
        try:
            if mode not in ("query", "fragment", "form_post"):
                raise AADError(70007, "invalid_request", app_name=app["name"], mode=mode)
            response_type = params.get("response_type", "")
            if not response_type:
                raise AADError(900144, "invalid_request", name="response_type")
            if response_type != "code":
                if "id_token" in response_type.split() or "token" in response_type.split():
                    raise AADError(700054, "unsupported_response_type")
                raise AADError(9002313, "invalid_request")
            if not ctx["scope"].strip():
                raise AADError(900144, "invalid_request", name="scope")
            if ctx["code_challenge_method"] not in ("plain", "S256"):
                raise AADError(9002313, "invalid_request")
            if ctx["prompt"] not in ("", "login", "none", "consent", "select_account"):
                raise AADError(9002313, "invalid_request")
            if ctx["prompt"] == "select_account" and ctx["login_hint"]:
                # "You can't use both login_hint and select_account."
                raise AADError(9002313, "invalid_request")
            ctx["scopes"] = parse_scopes(ctx["scope"], app, tenant["label"])
        except AADError as exc:
            return self.redirect_error(request, ctx, exc)
        ctx_id = secrets.token_urlsafe(24)
        with self.state.lock:
            self._expire_interactions()
            self.state.interactions[ctx_id] = ctx
        session = self._session(request)
        user = self.state.user_by_oid(session["oid"]) if session else None
        must_sign_in = (
            user is None
            or ctx["prompt"] in ("login", "select_account")
            or (ctx["login_hint"] and ctx["login_hint"].lower() != user["upn"])
        )
        if must_sign_in:
            if ctx["prompt"] == "none":
                return self.redirect_error(request, ctx, AADError(50058, "login_required"))
            return self._sign_in_page(ctx_id, ctx, app, username=ctx["login_hint"])
        assert user is not None
        return self._after_sign_in(request, ctx_id, ctx, app, user)

    def _expire_interactions(self) -> None:
        cutoff = time.monotonic() - 3600
        for key in [k for k, v in self.state.interactions.items() if v["created"] < cutoff]:
            del self.state.interactions[key]

    def _session(self, request: Request) -> dict[str, Any] | None:
        sid = request.cookies.get(self.SESSION_COOKIE)
        with self.state.lock:
            return self.state.sessions.get(sid) if sid else None

    def _sign_in_page(
        self,
        ctx_id: str,
        ctx: dict[str, Any],
        app: dict[str, Any],
        *,
        username: str,
        error: str = "",
    ) -> Response:
        html = pages.sign_in(
            action=f"/{ctx['segment']}/login",
            ctx=ctx_id,
            username=username,
            error=error,
            app_name=app["name"],
        )
        return Response(html, status=200, content_type="text/html; charset=utf-8")

    def _interaction(
        self, request: Request
    ) -> tuple[str, dict[str, Any], dict[str, Any]] | Response:
        ctx_id = request.form.get("ctx", "")
        with self.state.lock:
            ctx = self.state.interactions.get(ctx_id)
        app = self.state.app(ctx["client_id"]) if ctx else None
        if ctx is None or app is None:
            return self.error_page(request, AADError(90014, "invalid_request", name="ctx"))
        return ctx_id, ctx, app

    def login(self, request: Request, segment: str) -> Response:
        """POST of the sign-in form."""
        found = self._interaction(request)
        if isinstance(found, Response):
            return found
        ctx_id, ctx, app = found
        username = request.form.get("username", "").strip().lower()
        password = request.form.get("password", "")
        user = self.state.user(username) if username else None
        if user is None:
            exc = AADError(50034, "invalid_grant", user=username, tenant=ctx["tenant"]["label"])
            self.state.count("aadsts_50034")
            return self._sign_in_page(
                ctx_id,
                ctx,
                app,
                username=username,
                error=f"This username may be incorrect. AADSTS{exc.code}: {exc.message}",
            )
        if user["kind"] == "shared":
            exc = AADError(50057, "invalid_grant")
            self.state.count("aadsts_50057")
            return self._sign_in_page(
                ctx_id, ctx, app, username=username, error=f"AADSTS50057: {exc.message}"
            )
        if not secrets.compare_digest(user["password"].encode(), password.encode()):
            exc = AADError(50126, "invalid_grant")
            self.state.count("aadsts_50126")
            return self._sign_in_page(
                ctx_id,
                ctx,
                app,
                username=username,
                error=f"Your account or password is incorrect. AADSTS{exc.code}: {exc.message}",
            )
        sid = secrets.token_urlsafe(32)
        with self.state.lock:
            self.state.sessions[sid] = {"oid": user["oid"], "auth_time": int(self.state.now())}
        response = self._after_sign_in(request, ctx_id, ctx, app, user, fresh=True)
        response.set_cookie(self.SESSION_COOKIE, sid, httponly=True, samesite="Lax", path="/")
        return response

    def _after_sign_in(
        self,
        request: Request,
        ctx_id: str,
        ctx: dict[str, Any],
        app: dict[str, Any],
        user: dict[str, Any],
        *,
        fresh: bool = False,
    ) -> Response:
        try:
            self._check_user_may_sign_in(ctx, app, user)
        except AADError as exc:
            return self.error_page(request, exc)
        ctx["oid"] = user["oid"]
        needed = self.requested_keys(ctx["scopes"]) - self.consented(app, user)
        if needed or ctx["prompt"] == "consent":
            if ctx["prompt"] == "none":
                return self.redirect_error(
                    request,
                    ctx,
                    AADError(
                        65001, "consent_required", client_id=app["client_id"], app_name=app["name"]
                    ),
                )
            return self._consent_page(ctx_id, ctx, app, user)
        return self._issue_code(ctx, app, user)

    def _check_user_may_sign_in(
        self, ctx: dict[str, Any], app: dict[str, Any], user: dict[str, Any]
    ) -> None:
        tenant = ctx["tenant"]
        consumer = user["kind"] == "consumer"
        idp = "live.com" if consumer else f"https://sts.windows.net/{user['tenant_id']}/"
        mismatch = (
            (tenant["kind"] == "consumers" and not consumer)
            or (tenant["kind"] == "organizations" and consumer)
            or (tenant["kind"] == "tenant" and tenant["id"] != user["tenant_id"])
            or (app["audience"] == "AzureADMyOrg" and user["tenant_id"] != app["tenant_id"])
            or (app["audience"] == "AzureADMultipleOrgs" and consumer)
            or (app["audience"] == "PersonalMicrosoftAccount" and not consumer)
        )
        if mismatch:
            raise AADError(
                50020,
                "invalid_request",
                user=user["upn"],
                idp=idp,
                tenant=tenant["id"] or app["tenant_id"],
                client_id=app["client_id"],
                app_name=app["name"],
            )
        user_tenant = self.state.tenant(user["tenant_id"]) or {}
        if user_tenant.get("conditional_access_block"):
            raise AADError(53003, "access_denied")
        if app["assignment_required"] and user["oid"] not in app["assigned_users"]:
            raise AADError(
                50105,
                "invalid_request",
                app_name=app["name"],
                client_id=app["client_id"],
                user=user["upn"],
            )

    def _consent_page(
        self, ctx_id: str, ctx: dict[str, Any], app: dict[str, Any], user: dict[str, Any]
    ) -> Response:
        scopes: Any = ctx["scopes"]
        items: list[tuple[str, str]] = []
        for entry in scopes.resources.values():
            items.extend((pages.PERMISSION_WORDS.get(p, p), p) for p in entry["perms"])
        items.extend((pages.PERMISSION_WORDS[s], s) for s in scopes.oidc)
        publisher = "unverified" if app["tenant_id"] else ""
        html = pages.consent(
            action=f"/{ctx['segment']}/consent",
            ctx=ctx_id,
            app_name=app["name"],
            publisher=f"{publisher} · mailgate sandbox",
            user=user["upn"],
            permissions=items,
        )
        return Response(html, content_type="text/html; charset=utf-8")

    def consent(self, request: Request, segment: str) -> Response:
        """POST of the consent page: Accept records the consent, Cancel redirects access_denied."""
        found = self._interaction(request)
        if isinstance(found, Response):
            return found
        ctx_id, ctx, app = found
        user = self.state.user_by_oid(ctx.get("oid", ""))
        if user is None:
            return self.error_page(request, AADError(90014, "invalid_request", name="username"))
        with self.state.lock:
            self.state.interactions.pop(ctx_id, None)
        if request.form.get("decision") != "accept":
            return self.redirect_error(request, ctx, AADError(65004, "access_denied"))
        with self.state.change() as data:
            key = f"{user['oid']}|{app['client_id']}"
            keys = set(data["consents"].get(key, [])) | self.requested_keys(ctx["scopes"])
            data["consents"][key] = sorted(keys)
        return self._issue_code(ctx, app, user)

    def _issue_code(
        self, ctx: dict[str, Any], app: dict[str, Any], user: dict[str, Any]
    ) -> Response:
        code = random_token("1.A", 180)
        scopes: Scopes = ctx["scopes"]
        user_tenant = self.state.tenant(user["tenant_id"]) or {}
        with self.state.change() as data:
            now = self.state.now()
            # Drop codes that can no longer be redeemed so the state file stays small.
            for key in [
                k for k, v in data["codes"].items() if v["issued_at"] < now - 2 * CODE_LIFETIME
            ]:
                del data["codes"][key]
            data["codes"][digest(code)] = {
                "client_id": app["client_id"],
                "redirect_uri": ctx["redirect_uri"],
                "oid": user["oid"],
                "tenant_id": user["tenant_id"],
                "oidc": scopes.oidc,
                "resources": scopes.resources,
                "challenge": ctx["code_challenge"],
                "method": ctx["code_challenge_method"],
                "nonce": ctx["nonce"],
                "issued_at": now,
                "used": False,
                "mfa": bool(user_tenant.get("mfa_required")),
            }
        self.state.count("codes_issued")
        return self._redirect(ctx, {"code": code})

    def logout(self, request: Request, segment: str) -> Response:
        sid = request.cookies.get(self.SESSION_COOKIE)
        with self.state.lock:
            self.state.sessions.pop(sid or "", None)
        target = request.values.get("post_logout_redirect_uri")
        response = (
            Response(status=302)
            if target
            else Response(
                pages.page("Signed out", "<h1>You signed out of your account</h1>"),
                content_type="text/html; charset=utf-8",
            )
        )
        if target:
            response.headers["Location"] = target
        response.delete_cookie(self.SESSION_COOKIE, path="/")
        return response

    # -- token -------------------------------------------------------------------------------

    def token(self, request: Request, segment: str) -> Response:
        form = request.form
        grant_type = form.get("grant_type", "")
        self.state.count("token_requests", f"token_requests_{grant_type or 'missing'}")
        fault = apply_faults(self.state, self.stopping)
        if fault is not None:
            code, error = (
                (50000, "server_error")
                if fault.status == 500
                else (90033, "temporarily_unavailable")
            )
            return self.json_error(request, AADError(code, error, status=fault.status))
        basic = request.authorization is not None and request.authorization.type == "basic"
        try:
            if request.method != "POST":
                raise AADError(
                    900561, "invalid_request", valid_verbs="POST", invalid_verb=request.method
                )
            tenant = self.resolve_tenant(segment)
            client_id = form.get("client_id") or (
                request.authorization.username if basic and request.authorization else None
            )
            app = self.find_app(client_id, tenant, token=True)
            if not grant_type:
                raise AADError(900144, "invalid_request", name="grant_type")
            if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
                raise AADError(70003, "unsupported_grant_type", grant_type=grant_type)
            self._authenticate_client(request, app)
            if grant_type == "authorization_code":
                body = self._redeem_code(request, app, form)
            elif grant_type == "refresh_token":
                body = self._redeem_refresh_token(request, app, form)
            else:
                body = self._client_credentials(request, app, tenant, form)
        except AADError as exc:
            return self.json_error(request, exc, basic_auth=basic)
        self.state.count("tokens_issued")
        response = _json(body)
        response.headers["Cache-Control"] = "no-store, no-cache"
        response.headers["Pragma"] = "no-cache"
        return response

    def _authenticate_client(self, request: Request, app: dict[str, Any]) -> None:
        form = request.form
        secret = form.get("client_secret")
        if secret is None and request.authorization and request.authorization.type == "basic":
            secret = request.authorization.password
        assertion = form.get("client_assertion")
        # "Treat application as a public client" decides; Web redirect URIs make it confidential.
        # Reference: https://learn.microsoft.com/en-us/troubleshoot/entra/entra-id/app-integration/confidential-client-application-authentication-error-aadsts7000218
        if app["public_client"]:
            if secret or assertion:
                raise AADError(700025, "invalid_client", status=401)
            return
        if assertion:
            # Certificate credentials are not registered in the sandbox; every assertion fails.
            raise AADError(700027, "invalid_client", status=401)
        if not secret:
            raise AADError(7000218, "invalid_client", status=401)
        now = self.state.now()
        for stored in app["secrets"]:
            if secrets.compare_digest(stored["value"].encode(), secret.encode()):
                if stored["expires_at"] <= now:
                    raise AADError(
                        7000222, "invalid_client", status=401, client_id=app["client_id"]
                    )
                return
        raise AADError(7000215, "invalid_client", status=401, client_id=app["client_id"])

    def _redeem_code(
        self, request: Request, app: dict[str, Any], form: MultiDict[str, str]
    ) -> dict[str, Any]:
        code = form.get("code")
        if not code:
            raise AADError(900144, "invalid_request", name="code")
        if not form.get("redirect_uri"):
            raise AADError(900144, "invalid_request", name="redirect_uri")
        with self.state.change() as data:
            record = data["codes"].get(digest(code))
            if record is None:
                raise AADError(9002313, "invalid_grant")
            if record["used"]:
                raise AADError(54005, "invalid_grant")
            if record["client_id"] != app["client_id"]:
                raise AADError(70000, "invalid_grant")
            if self.state.now() - record["issued_at"] > CODE_LIFETIME:
                raise AADError(70008, "invalid_grant")
            if record["redirect_uri"] != form.get("redirect_uri"):
                raise AADError(
                    50011,
                    "invalid_grant",
                    redirect_uri=form.get("redirect_uri"),
                    client_id=app["client_id"],
                )
            if record["challenge"]:
                verifier = form.get("code_verifier", "")
                if record["method"] == "S256":
                    computed = _b64url(hashlib.sha256(verifier.encode()).digest())
                else:
                    computed = verifier
                if not verifier or not secrets.compare_digest(computed, record["challenge"]):
                    raise AADError(501481, "invalid_grant")
            # Single use: a second redemption gets AADSTS54005.
            record["used"] = True
            record = dict(record)
        user = self.state.user_by_oid(record["oid"])
        if user is None:
            raise AADError(70000, "invalid_grant")
        token_scope = form.get("scope")
        if token_scope:
            scopes = parse_scopes(token_scope, app, record["tenant_id"])
            if len(scopes.resources) > 1:
                raise AADError(28000, "invalid_scope", scope=token_scope)
            oidc = scopes.oidc or record["oidc"]
            resource = scopes.first_resource() or next(iter(record["resources"]), None)
        else:
            oidc = record["oidc"]
            resource = next(iter(record["resources"]), None)
        self._check_policies(user, record["mfa"], resource)
        offline = "offline_access" in record["oidc"]
        return self._tokens(
            request,
            app=app,
            user=user,
            resource=resource,
            oidc=oidc,
            nonce=record["nonce"],
            mfa=record["mfa"],
            refresh=offline,
        )

    def _check_policies(self, user: dict[str, Any], mfa_done: bool, resource: str | None) -> None:
        tenant = self.state.tenant(user["tenant_id"]) or {}
        if tenant.get("conditional_access_block"):
            raise AADError(53003, "invalid_grant")
        if tenant.get("mfa_required") and not mfa_done:
            raise AADError(
                50076,
                "invalid_grant",
                resource=RESOURCE_URL.get(resource or "", "00000003-0000-0000-c000-000000000000"),
            )

    def _redeem_refresh_token(
        self, request: Request, app: dict[str, Any], form: MultiDict[str, str]
    ) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise AADError(900144, "invalid_request", name="refresh_token")
        now = self.state.now()
        with self.state.change() as data:
            record = data["refresh_tokens"].get(digest(token))
            if record is None:
                raise AADError(9002313, "invalid_grant")
            if record["client_id"] != app["client_id"]:
                raise AADError(70000, "invalid_grant")
            user = self.state.user_by_oid(record["oid"])
            if user is None or record["issued_at"] < user["tokens_valid_after"]:
                raise AADError(
                    50173,
                    "invalid_grant",
                    issued=_timestamp(record["issued_at"]),
                    valid_from=_timestamp(user["tokens_valid_after"] if user else now),
                )
            if now - record["last_used"] > REFRESH_TOKEN_MAX_INACTIVE:
                raise AADError(700082, "invalid_grant", issued=_timestamp(record["issued_at"]))
            # Rotation: the old refresh token stays valid; using it only resets its inactivity clock.
            record["last_used"] = now
            record = dict(record)
        requested = form.get("scope", "")
        scopes = parse_scopes(requested, app, user["tenant_id"]) if requested else Scopes()
        # "If the scopes specified in this request span multiple resource server, then the
        # Microsoft identity platform returns a token for the resource specified in the first scope."
        resource = scopes.first_resource() or record["resource"]
        wanted = {
            f"{resource}:{p}" for p in scopes.resources.get(resource or "", {}).get("perms", [])
        }
        if not wanted <= self.consented(app, user):
            if user["kind"] == "consumer":
                raise AADError(70000, "invalid_grant")
            raise AADError(65001, "invalid_grant", client_id=app["client_id"], app_name=app["name"])
        self._check_policies(user, record["mfa"], resource)
        return self._tokens(
            request,
            app=app,
            user=user,
            resource=resource,
            oidc=scopes.oidc or record["oidc"],
            nonce=None,
            mfa=record["mfa"],
            refresh=True,
        )

    def _tokens(
        self,
        request: Request,
        *,
        app: dict[str, Any],
        user: dict[str, Any],
        resource: str | None,
        oidc: list[str],
        nonce: str | None,
        mfa: bool,
        refresh: bool,
    ) -> dict[str, Any]:
        now = int(self.state.now())
        lifetime = self.state.access_token_lifetime()
        tid = user["tenant_id"]
        consented = self.consented(app, user)
        resource = resource or "graph"
        perms = sorted(k.split(":", 1)[1] for k in consented if k.startswith(f"{resource}:"))
        if resource == "graph" and not perms:
            perms = ["User.Read"]
        audience = RESOURCE_URL[resource]
        sub = _b64url(hashlib.sha256(f"{user['oid']}|{app['client_id']}".encode()).digest())
        access_claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tid}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "acr": "1",
            "amr": ["pwd", "mfa"] if mfa else ["pwd"],
            "app_displayname": app["name"],
            "appid": app["client_id"],
            "azp": app["client_id"],
            "appidacr": "1",
            "idtyp": "user",
            "name": user["display_name"],
            "oid": user["oid"],
            "scp": " ".join(perms),
            "sub": sub,
            "tid": tid,
            "unique_name": user["upn"],
            "upn": user["upn"],
            "preferred_username": user["upn"],
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        granted_oidc = [s for s in oidc if s in consented or s == "offline_access"]
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(
                [f"{RESOURCE_URL[resource]}/{p}" for p in perms]
                + [s for s in granted_oidc if s != "offline_access"]
                + (["offline_access"] if refresh else [])
            ),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.state.signing_key.sign(access_claims),
        }
        if refresh:
            token = random_token("1.AQ", 200)
            with self.state.change() as data:
                data["refresh_tokens"][digest(token)] = {
                    "client_id": app["client_id"],
                    "oid": user["oid"],
                    "tenant_id": tid,
                    "resource": resource,
                    "oidc": oidc,
                    "issued_at": float(now),
                    "last_used": float(now),
                    "mfa": mfa,
                }
            body["refresh_token"] = token
        if "openid" in oidc:
            id_claims = {
                "aud": app["client_id"],
                "iss": f"{request.host_url.rstrip('/')}/{tid}/v2.0",
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "name": user["display_name"],
                "oid": user["oid"],
                "preferred_username": user["upn"],
                "email": user["upn"],
                "sub": sub,
                "tid": tid,
                "uti": secrets.token_urlsafe(16),
                "ver": "2.0",
            }
            if nonce:
                id_claims["nonce"] = nonce
            body["id_token"] = self.state.signing_key.sign(id_claims)
        if request.form.get("client_info") == "1":
            # MSAL asks for client_info to build the account's home_account_id.
            body["client_info"] = _b64url(json.dumps({"uid": user["oid"], "utid": tid}).encode())
        return body

    def _client_credentials(
        self,
        request: Request,
        app: dict[str, Any],
        tenant: dict[str, Any],
        form: MultiDict[str, str],
    ) -> dict[str, Any]:
        if tenant["kind"] in ("common", "consumers"):
            raise AADError(9001023, "invalid_request")
        raw = form.get("scope", "")
        if not raw:
            raise AADError(900144, "invalid_request", name="scope")
        items = raw.split()
        if any(not item.endswith("/.default") for item in items):
            raise AADError(1002012, "invalid_scope", scope=raw)
        scopes = parse_scopes(raw, app, tenant["label"])
        if len(scopes.resources) > 1:
            raise AADError(700022, "invalid_scope", scope=raw)
        resource = scopes.first_resource() or "graph"
        tid = tenant["id"] or app["tenant_id"]
        now = int(self.state.now())
        lifetime = self.state.access_token_lifetime()
        # Application permissions count only once an admin of that tenant granted consent;
        # without it Entra still issues a token, without the roles claim.
        roles = (
            [r for r in app["app_permissions"] if r in APP_ROLES[resource]]
            if tid in app["admin_consent_tenants"]
            else []
        )
        sp_oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tid}/{app['client_id']}"))
        claims: dict[str, Any] = {
            "aud": scopes.resources[resource]["aud"],
            "iss": f"https://sts.windows.net/{tid}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "app_displayname": app["name"],
            "appid": app["client_id"],
            "azp": app["client_id"],
            "appidacr": "1",
            "idtyp": "app",
            "oid": sp_oid,
            "sub": sp_oid,
            "tid": tid,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        if roles:
            claims["roles"] = roles
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.state.signing_key.sign(claims),
        }


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")
