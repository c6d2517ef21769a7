"""Entra's error shapes: the AADSTS texts, `AADError`, and the replies that carry them (token JSON, page, redirect)."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from werkzeug.wrappers import Request, Response

from mailgate.sandbox import pages

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState

# Texts of the AADSTS codes the sandbox produces: the wording of Microsoft's error-code reference, or
# the text real answers carry where that differs.
# Reference: https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
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


def timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")


class Replies:
    """Answers to the client: errors as token JSON, as Entra's error page or as a redirect, and codes."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def _error_fields(self, request: Request, exc: AADError) -> dict[str, Any]:
        now = self.state.now()
        trace_id = str(uuid.uuid4())
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        stamp = timestamp(now)
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
        response = json_response(self._error_fields(request, exc), exc.status)
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

    def redirect(self, ctx: dict[str, Any], fields: dict[str, str]) -> Response:
        """Send `fields` (a code, or an error) to the client's redirect URI in its response mode."""
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
        return self.redirect(
            ctx, {"error": exc.error, "error_description": fields["error_description"]}
        )
