"""Gmail OAuth Authentication applied to Google's OAuth 2.0 endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from mailgate.providers.base import Diagnosis, TokenSet, revealed
from mailgate.providers.errors import TokenError
from mailgate.providers.google import client, errors
from mailgate.providers.http import AuthorizationRequest, CodeRedemption
from mailgate.providers.oidc import account_claims, signed_in_account

if TYPE_CHECKING:
    from mailgate.providers.base import MailServer

# One scope covers IMAP, POP and SMTP. Reference: https://developers.google.com/workspace/gmail/imap/xoauth2-protocol
MAIL_SCOPE = "https://mail.google.com/"
SCOPES = [MAIL_SCOPE, "openid", "email"]


def _secret(server: MailServer) -> str:
    return revealed(server.client_secret)


class GoogleFlow:
    """OAuthFlow for Gmail / Google Workspace mailboxes."""

    def scopes(self, server: MailServer) -> list[str]:
        return list(SCOPES)

    def required_scopes(self, server: MailServer) -> list[str]:
        return [MAIL_SCOPE]

    def setup_problems(self, server: MailServer) -> list[str]:
        return []

    def authorization_url(
        self, server: MailServer, *, state: str, code_verifier: str, redirect_uri: str
    ) -> str:
        request = AuthorizationRequest(
            server.client_id, redirect_uri, " ".join(SCOPES), state, code_verifier, server.username
        )
        return client.authorize_url(str(settings.MAILGATE_GOOGLE_AUTH_URL), request)

    def exchange_code(
        self, server: MailServer, *, code: str, code_verifier: str, redirect_uri: str
    ) -> TokenSet:
        redemption = CodeRedemption(
            server.client_id, _secret(server), code, code_verifier, redirect_uri
        )
        return client.redeem_code(str(settings.MAILGATE_GOOGLE_TOKEN_URL), redemption)

    def refresh(self, server: MailServer, *, refresh_token: str, scopes: str) -> TokenSet:
        return client.refresh(
            str(settings.MAILGATE_GOOGLE_TOKEN_URL),
            client_id=server.client_id,
            client_secret=_secret(server),
            refresh_token=refresh_token,
        )

    def revoke(self, server: MailServer, *, token: str) -> None:
        client.revoke(str(settings.MAILGATE_GOOGLE_REVOKE_URL), token=token)

    def accounts_from_id_token(self, server: MailServer, id_token: str) -> set[str]:
        claims = account_claims(id_token, client_id=server.client_id)
        if claims.get("email_verified") is False:
            return set()
        return {signed_in_account(claims, ("email",))} - {""}

    def explain(self, error: str, description: str) -> Diagnosis:
        return errors.explain(error, description)

    def classify(self, exc: Exception) -> TokenError:
        return errors.classify(exc)
