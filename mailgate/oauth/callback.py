"""The providers' redirect back after Connect, as a service of named checks.

`complete_sign_in()` runs the checks in order; the first that fails raises SignInRefused with what to
show the administrator, and nothing is stored unless every check passed. The view only turns the
outcome into a page, so the checks can be called (and tested) without HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from mailgate import providers
from mailgate.audit.log import record
from mailgate.oauth import tokens
from mailgate.oauth.models import OAuthState, digest
from mailgate.providers.base import Diagnosis, OAuthFlow, TokenSet, revealed
from mailgate.providers.http import TokenEndpointError, TransientHTTPError
from mailgate.providers.oidc import IdTokenError
from mailgate.servers.models import MailServer

log = logging.getLogger("mailgate.oauth")

RESTART = "Open the server's page and press the Connect button again."


class SignInRefused(Exception):
    """A check failed: the page to show (HTTP status, title, explanation, fix). Nothing was stored."""

    def __init__(
        self,
        title: str,
        explanation: str,
        fix: str = RESTART,
        *,
        status: int = 400,
        server: MailServer | None = None,
        details: str = "",
    ) -> None:
        super().__init__(title)
        self.title = title
        self.explanation = explanation
        self.fix = fix
        self.status = status
        self.server = server
        self.details = details

    @classmethod
    def diagnosed(
        cls, diagnosis: Diagnosis, server: MailServer, details: str, status: int = 200
    ) -> SignInRefused:
        return cls(
            diagnosis.title,
            diagnosis.explanation,
            diagnosis.fix,
            status=status,
            server=server,
            details=details,
        )


@dataclass(frozen=True)
class Connected:
    """Every check passed and the grant is stored; `warning` is shown beside the success."""

    server: MailServer
    account: str
    warning: str = ""


def _scope_name(scope: str) -> str:
    return scope.rstrip("/").rsplit("/", 1)[-1].lower()


@dataclass
class SignInAnswer:
    """One redirect back from a provider: its query parameters and who received it."""

    provider_key: str
    params: Mapping[str, str]
    session_key: str
    is_administrator: bool

    def find_sign_in(self) -> OAuthState:
        """The sign-in started here that this answer's state names."""
        state = self.params.get("state", "")
        if not state:
            raise SignInRefused(
                "Sign-in answer without state",
                "The request carries no state parameter, so it cannot be matched to a sign-in "
                "started here. Nothing was changed.",
            )
        pending = (
            OAuthState.objects.select_related("server").filter(state_hash=digest(state)).first()
        )
        if pending is None:
            raise SignInRefused(
                "Unknown or already used sign-in",
                "This sign-in answer does not match any sign-in in progress: it was already "
                "used, has expired, or was altered. Nothing was changed.",
            )
        return pending

    def check_session(self, pending: OAuthState) -> None:
        if pending.session_hash != digest(self.session_key):
            raise SignInRefused(
                "Sign-in started in another browser session",
                "The sign-in was started from another session than this one. Nothing was changed.",
                "Finish the sign-in in the browser where you pressed Connect, or start again here.",
                status=403,
            )

    def check_provider(self, pending: OAuthState) -> None:
        if pending.provider != self.provider_key:
            raise SignInRefused(
                "Sign-in answer at the wrong address",
                "The answer arrived at another provider's callback. Nothing was changed.",
            )

    def check_administrator(self) -> None:
        if not self.is_administrator:
            raise SignInRefused(
                "Administrators only",
                "Only administrators can connect accounts.",
                "Sign in as an administrator.",
                status=403,
            )

    def use_up(self, pending: OAuthState) -> MailServer:
        """Delete the sign-in state (single use) and check its age; the server it was for."""
        if OAuthState.objects.filter(pk=pending.pk).delete()[0] != 1:
            raise SignInRefused(
                "Sign-in already used",
                "This sign-in answer was already processed. Nothing was changed.",
            )
        server = pending.server
        if pending.is_expired():
            raise SignInRefused(
                "Sign-in expired",
                "More than 10 minutes passed since Connect was pressed. Nothing was changed.",
                server=server,
            )
        return server

    def check_provider_error(self, flow: OAuthFlow, server: MailServer) -> None:
        """The provider answered with an error (consent declined, wrong tenant, ...)."""
        error = self.params.get("error", "")
        if error:
            description = self.params.get("error_description", "")
            label = providers.get(self.provider_key).label
            log.info("sign-in for %s refused by %s: %s", server.name, label, error)
            raise SignInRefused.diagnosed(
                flow.explain(error, description), server, f"{error}\n{description}".strip()
            )

    def redeem_code(self, flow: OAuthFlow, server: MailServer, pending: OAuthState) -> TokenSet:
        code = self.params.get("code", "")
        if not code:
            raise SignInRefused(
                "Sign-in answer without a code",
                "The provider's answer carries neither a code nor an error.",
                server=server,
            )
        try:
            return flow.exchange_code(
                server,
                code=code,
                code_verifier=revealed(pending.code_verifier),
                redirect_uri=pending.redirect_uri,
            )
        except TokenEndpointError as exc:
            raise SignInRefused.diagnosed(
                flow.explain(exc.error, exc.description),
                server,
                f"{exc.error}\n{exc.description}".strip(),
            ) from None
        except TransientHTTPError as exc:
            label = providers.get(self.provider_key).label
            raise SignInRefused(
                f"{label} could not be reached",
                f"The token endpoint did not answer properly: {exc}. Nothing was changed.",
                "Try again in a few minutes. " + RESTART,
                status=502,
                server=server,
            ) from None

    @staticmethod
    def check_refresh_token(tokenset: TokenSet, server: MailServer) -> None:
        if not tokenset.refresh_token:
            raise SignInRefused(
                "No refresh token",
                "The provider issued no refresh token, so mailgate could not keep access. "
                "Nothing was stored.",
                "Press Connect again and accept every permission listed (including keeping "
                "access to data you have given it access to).",
                status=200,
                server=server,
            )

    @staticmethod
    def check_account(flow: OAuthFlow, tokenset: TokenSet, server: MailServer) -> str:
        """The account that signed in must be the server's Username; a warning when unknown."""
        if not tokenset.id_token:
            # Without an id_token nothing says who signed in: the tokens could be anyone's.
            raise SignInRefused(
                "The sign-in did not say who signed in",
                "The provider's answer carries no id_token, so the account that signed in "
                "cannot be checked against the server's Username. Nothing was stored.",
                "Press Connect again; the app registration must allow the openid, email and "
                "profile permissions.",
                status=200,
                server=server,
            )
        try:
            accounts = flow.accounts_from_id_token(server, tokenset.id_token)
        except IdTokenError as exc:
            raise SignInRefused(
                "The sign-in could not be verified",
                f"The id_token is not acceptable: {exc}. Nothing was stored.",
                status=200,
                server=server,
            ) from None
        if server.username.strip().lower() not in accounts:
            signed_in = ", ".join(sorted(accounts)) or "an account the provider did not name"
            raise SignInRefused(
                "Signed in with another account",
                f"You signed in as {signed_in}, but this server's Username is "
                f"{server.username}. The tokens were not stored.",
                f"Press Connect again and sign in as {server.username} (sign out of the other "
                "account first, or use a private window), or change Username to the account you "
                "want to use.",
                status=200,
                server=server,
            )
        return ""

    @staticmethod
    def check_scopes(flow: OAuthFlow, tokenset: TokenSet, server: MailServer) -> None:
        granted = {_scope_name(s) for s in tokenset.scope.split()}
        missing = [
            s for s in flow.required_scopes(server) if granted and _scope_name(s) not in granted
        ]
        if missing:
            raise SignInRefused(
                "Permissions not granted",
                "The sign-in did not grant " + ", ".join(missing) + ". Nothing was stored.",
                "Press Connect again and allow every permission, or have an administrator grant "
                "consent for the app.",
                status=200,
                server=server,
            )


def complete_sign_in(answer: SignInAnswer) -> Connected:
    """Run every check of a provider's answer in order, then store the grant."""
    pending = answer.find_sign_in()
    answer.check_session(pending)
    answer.check_provider(pending)
    answer.check_administrator()
    server = answer.use_up(pending)
    flow = tokens.flow_for(server)
    answer.check_provider_error(flow, server)
    tokenset = answer.redeem_code(flow, server, pending)
    answer.check_refresh_token(tokenset, server)
    warning = answer.check_account(flow, tokenset, server)
    answer.check_scopes(flow, tokenset, server)
    account = server.username.strip().lower()
    tokens.store_grant(server, tokens=tokenset, account=account, scopes=flow.scopes(server))
    log.info("%s connected as %s", server.name, account)
    record("connected", subject=server.name)
    return Connected(server, account, warning)
