"""The Microsoft identity platform v2.0 endpoints, one function each, through the one HTTP seam."""

from __future__ import annotations

from mailgate.providers.base import TokenSet
from mailgate.providers.http import (
    AuthorizationRequest,
    CodeRedemption,
    authorization_url,
    call_token_endpoint,
    oauth_client,
    redeem,
)


def authorize_url(login_url: str, tenant: str, request: AuthorizationRequest) -> str:
    """The authorization code request URL, with PKCE S256 and the code returned in the query."""
    # Reference: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow#request-an-authorization-code
    endpoint = f"{login_url}/{tenant}/oauth2/v2.0/authorize"
    return authorization_url(endpoint, request, response_mode="query")


def redeem_code(login_url: str, tenant: str, redemption: CodeRedemption, *, scope: str) -> TokenSet:
    """Exchange an authorization code (with its PKCE verifier) for tokens."""
    # Reference: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow#redeem-a-code-for-an-access-token
    return redeem(f"{login_url}/{tenant}/oauth2/v2.0/token", redemption, scope=scope)


def refresh(
    login_url: str,
    tenant: str,
    *,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    scope: str,
) -> TokenSet:
    """Use a refresh token; Microsoft answers with a new (rotated) refresh token every time."""
    # Reference: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow#refresh-the-access-token
    client = oauth_client(client_id=client_id, client_secret=client_secret)
    token = call_token_endpoint(
        client,
        "refresh_token",
        url=f"{login_url}/{tenant}/oauth2/v2.0/token",
        refresh_token=refresh_token,
        scope=scope,
    )
    return TokenSet.from_response(token)


def jwks_url(login_url: str) -> str:
    """The tenant-independent signing keys of id_tokens."""
    # Reference: https://learn.microsoft.com/entra/identity-platform/access-tokens#validate-the-signature
    return f"{login_url}/common/discovery/v2.0/keys"
