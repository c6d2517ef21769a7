"""Google's OAuth 2.0 endpoints, one function each, through the one HTTP seam."""

from __future__ import annotations

from mailgate.providers.base import TokenSet
from mailgate.providers.http import (
    AuthorizationRequest,
    CodeRedemption,
    TokenEndpointError,
    TransientHTTPError,
    authorization_url,
    call_token_endpoint,
    oauth_client,
    post_form,
    redeem,
)


def authorize_url(auth_url: str, request: AuthorizationRequest) -> str:
    """The authorization request URL: offline access, consent forced so a refresh token is issued."""
    # Reference: https://developers.google.com/identity/protocols/oauth2/web-server#creatingclient
    return authorization_url(auth_url, request, access_type="offline", prompt="consent")


def redeem_code(token_url: str, redemption: CodeRedemption) -> TokenSet:
    """Exchange an authorization code (with its PKCE verifier) for tokens."""
    # Reference: https://developers.google.com/identity/protocols/oauth2/web-server#exchange-authorization-code
    return redeem(token_url, redemption)


def refresh(token_url: str, *, client_id: str, client_secret: str, refresh_token: str) -> TokenSet:
    """Use a refresh token; Google usually keeps the same refresh token (none in the answer)."""
    # Reference: https://developers.google.com/identity/protocols/oauth2/web-server#offline
    client = oauth_client(client_id=client_id, client_secret=client_secret)
    token = call_token_endpoint(client, "refresh_token", url=token_url, refresh_token=refresh_token)
    return TokenSet.from_response(token)


def revoke(revoke_url: str, *, token: str) -> None:
    """Revoke a token (and with a refresh token, the whole grant)."""
    # Reference: https://developers.google.com/identity/protocols/oauth2/web-server#tokenrevoke
    resp = post_form(revoke_url, {"token": token})
    if resp.status_code >= 500:
        raise TransientHTTPError(
            f"HTTP {resp.status_code} from {revoke_url}", status=resp.status_code
        )
    if resp.status_code != 200:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        error = str(body.get("error") or f"http_{resp.status_code}")
        if error == "invalid_token":
            return  # already revoked or expired: the goal is reached
        raise TokenEndpointError(
            status=resp.status_code,
            error=error,
            description=str(body.get("error_description") or ""),
        )
