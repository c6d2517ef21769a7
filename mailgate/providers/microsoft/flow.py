"""Outlook OAuth Authentication: scopes, tenant and cloud of a server, applied to the v2.0 endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailgate.providers.base import Diagnosis, TokenSet, revealed
from mailgate.providers.errors import TokenError
from mailgate.providers.http import AuthorizationRequest, CodeRedemption
from mailgate.providers.microsoft import client, errors
from mailgate.providers.microsoft.tenant import cloud, is_valid_tenant, login_url, resolve_tenant
from mailgate.providers.oidc import account_claims, signed_in_account

if TYPE_CHECKING:
    from mailgate.providers.base import MailServer

# Reference: https://learn.microsoft.com/entra/identity-platform/scopes-oidc#openid-connect-scopes
OIDC_SCOPES = ["offline_access", "openid", "email", "profile"]


def _secret(server: MailServer) -> str:
    return revealed(server.client_secret)


class MicrosoftFlow:
    """OAuthFlow for Microsoft 365 / Outlook.com mailboxes."""

    def mail_scopes(self, server: MailServer) -> list[str]:
        # Full resource URLs: a bare "SMTP.Send" would resolve to Microsoft Graph.
        # Reference: https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth#get-an-access-token
        resource = cloud(server.cloud).outlook_resource
        scopes = []
        if server.has_outgoing:
            scopes.append(f"{resource}/SMTP.Send")
        if server.incoming_protocol == "imap":
            scopes.append(f"{resource}/IMAP.AccessAsUser.All")
        elif server.incoming_protocol == "pop3":
            scopes.append(f"{resource}/POP.AccessAsUser.All")
        return scopes

    def scopes(self, server: MailServer) -> list[str]:
        return [*OIDC_SCOPES, *self.mail_scopes(server)]

    def required_scopes(self, server: MailServer) -> list[str]:
        return self.mail_scopes(server)

    def setup_problems(self, server: MailServer) -> list[str]:
        if server.tenant and not is_valid_tenant(server.tenant):
            return [
                "Tenant: use common, organizations, consumers, a tenant ID or a domain "
                "(or leave it empty to use the Username's domain)."
            ]
        return []

    def tenant(self, server: MailServer) -> str:
        return resolve_tenant(server.tenant, server.username)

    def authorization_url(
        self, server: MailServer, *, state: str, code_verifier: str, redirect_uri: str
    ) -> str:
        scope = " ".join(self.scopes(server))
        request = AuthorizationRequest(
            server.client_id, redirect_uri, scope, state, code_verifier, server.username
        )
        return client.authorize_url(login_url(server.cloud), self.tenant(server), request)

    def exchange_code(
        self, server: MailServer, *, code: str, code_verifier: str, redirect_uri: str
    ) -> TokenSet:
        redemption = CodeRedemption(
            server.client_id, _secret(server), code, code_verifier, redirect_uri
        )
        scope = " ".join(self.scopes(server))
        return client.redeem_code(
            login_url(server.cloud), self.tenant(server), redemption, scope=scope
        )

    def refresh(self, server: MailServer, *, refresh_token: str, scopes: str) -> TokenSet:
        return client.refresh(
            login_url(server.cloud),
            self.tenant(server),
            client_id=server.client_id,
            client_secret=_secret(server),
            refresh_token=refresh_token,
            scope=scopes or " ".join(self.scopes(server)),
        )

    def revoke(self, server: MailServer, *, token: str) -> None:
        # The v2.0 platform has no per-token revocation endpoint for confidential web apps: the
        # tokens are deleted locally; an administrator revokes sessions in Entra ID if needed.
        # Reference: https://learn.microsoft.com/entra/identity-platform/refresh-tokens#token-revocation
        return None

    def accounts_from_id_token(self, server: MailServer, id_token: str) -> set[str]:
        """The addresses the id_token names for the user: `preferred_username` and `upn`; the
        `email` claim only when neither is there, since Entra does not verify it (any user can
        set it to another's address)."""
        claims = account_claims(
            id_token,
            client_id=server.client_id,
            jwks_url=client.jwks_url(login_url(server.cloud)),
        )
        names = {signed_in_account(claims, (n,)) for n in ("preferred_username", "upn")} - {""}
        return names or {signed_in_account(claims, ("email",))} - {""}

    def explain(self, error: str, description: str) -> Diagnosis:
        return errors.explain(error, description)

    def classify(self, exc: Exception) -> TokenError:
        return errors.classify(exc)
