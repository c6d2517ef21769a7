"""What Google OAuth errors and Gmail replies mean, and what fixes them."""

from __future__ import annotations

from mailgate.providers.base import Diagnosis
from mailgate.providers.errors import (
    ClientCredentialsInvalid,
    ReconnectRequired,
    TokenError,
    TokenUnavailable,
)
from mailgate.providers.http import TokenEndpointError, TransientHTTPError
from mailgate.providers.replies import Effect, ReplyRule, transient_diagnosis

CONSOLE = "Google Cloud console > APIs & Services"
RECONNECT_FIX = "Press Connect your Gmail account and sign in again as the mailbox's user."
CLIENT_FIX = (
    f"In {CONSOLE} > Credentials open the OAuth 2.0 Client ID (type Web application) and copy its "
    "Client ID and Client secret into this form."
)

# Reference: https://developers.google.com/identity/protocols/oauth2/web-server#handlingresponse
BY_ERROR: dict[str, Diagnosis] = {
    "redirect_uri_mismatch": Diagnosis(
        "Redirect URI mismatch",
        "The redirect URI mailgate sent is not an authorized redirect URI of the OAuth client.",
        f"Copy the OAuth2 Redirect URL from this form into {CONSOLE} > Credentials > (your OAuth "
        "client) > Authorized redirect URIs (scheme, host, port, path and trailing slash must "
        "match), save, then press Connect again. Behind a reverse proxy, set MAILGATE_PUBLIC_URL "
        "to the public https address.",
    ),
    "access_denied": Diagnosis(
        "Access denied",
        "The user pressed Cancel on Google's consent screen, or the app's user type or test-user "
        "list does not include this account.",
        f"Press Connect your Gmail account again and allow access. For an app in Testing, add the "
        f"account under {CONSOLE} > OAuth consent screen > Test users.",
    ),
    "invalid_client": Diagnosis(
        "Invalid OAuth client",
        "Google does not know this Client ID, or the Client Secret is wrong.",
        CLIENT_FIX,
    ),
    "unauthorized_client": Diagnosis(
        "OAuth client not authorized",
        "The refresh token was issued to another OAuth client.",
        CLIENT_FIX + " Then press Connect again.",
    ),
    "deleted_client": Diagnosis(
        "OAuth client deleted", "The OAuth client was deleted in the Cloud console.", CLIENT_FIX
    ),
    "invalid_grant": Diagnosis(
        "Grant expired or revoked",
        "Google refused the stored grant: the user revoked access, changed the password, the "
        "token was unused for six months, or the app is in Testing (refresh tokens die after "
        "7 days).",
        RECONNECT_FIX
        + f" To stop weekly expiry, publish the app ({CONSOLE} > OAuth consent screen > Publish).",
    ),
    "admin_policy_enforced": Diagnosis(
        "Blocked by the Workspace administrator",
        "A Google Workspace policy does not allow this app to access the account.",
        "In Google Admin console > Security > API controls, trust this OAuth client, then press "
        "Connect again.",
    ),
    "org_internal": Diagnosis(
        "Internal app, external account",
        "The OAuth consent screen is Internal and the account is outside the organisation.",
        "Sign in with an account of the organisation, or make the app External.",
    ),
    "invalid_scope": Diagnosis(
        "Invalid scope",
        "The requested scope is not allowed for this app.",
        f"Add https://mail.google.com/ under {CONSOLE} > OAuth consent screen > Scopes.",
    ),
    "invalid_request": Diagnosis(
        "Invalid request",
        "Google refused the request as malformed.",
        "Check Client ID on this form, then press Connect again.",
    ),
}


def explain(error: str, description: str) -> Diagnosis:
    return BY_ERROR.get(
        error,
        Diagnosis(
            f"Google refused the request ({error or 'unknown error'})",
            "Google's message is shown below.",
            "Check Client ID and Client Secret on this form.",
        ),
    )


def classify(exc: Exception) -> TokenError:
    """A failed token refresh as one of the token lifecycle's errors."""
    if isinstance(exc, TransientHTTPError):
        return TokenUnavailable(
            f"Google's token endpoint is unavailable: {exc}",
            diagnosis=transient_diagnosis(str(exc)),
            code=exc.error or str(exc.status or "network"),
        )
    if not isinstance(exc, TokenEndpointError):
        return TokenError(str(exc))
    diagnosis = explain(exc.error, exc.description)
    if exc.error in ("invalid_client", "unauthorized_client", "deleted_client"):
        return ClientCredentialsInvalid(
            diagnosis.title, diagnosis=diagnosis.as_text(), code=exc.error
        )
    if exc.error in ("invalid_grant", "admin_policy_enforced", "invalid_scope", "org_internal"):
        return ReconnectRequired(diagnosis.title, diagnosis=diagnosis.as_text(), code=exc.error)
    return TokenError(diagnosis.title, diagnosis=diagnosis.as_text(), code=exc.error)


# Gmail replies. The sending limit's text is Gmail's own and recognised on any server; the others
# use words other servers use too. Reference: https://support.google.com/a/answer/3726730
# Reference: https://developers.google.com/workspace/gmail/imap/xoauth2-protocol
REPLIES: tuple[ReplyRule, ...] = (
    ReplyRule(
        r"5\.7\.[18].*(Username and Password not accepted|BadCredentials)|AUTHENTICATIONFAILED|"
        r"SASL authentication failed",
        Diagnosis(
            "Gmail rejected the token",
            "Gmail did not accept the access token for this mailbox: the Username is not the "
            "connected Google account, the grant lacks https://mail.google.com/, or IMAP is off.",
            "Check that Username is the connected Google account, that IMAP is enabled in Gmail > "
            "Settings > Forwarding and POP/IMAP, then press Connect your Gmail account again.",
        ),
        Effect.HOLD,
        anywhere=False,
    ),
    ReplyRule(
        r"5\.7\.9|Application-specific password required",
        Diagnosis(
            "App password required",
            "The account has 2-Step Verification; Gmail refuses its normal password over SMTP.",
            "Use Gmail OAuth Authentication instead of a password.",
        ),
        anywhere=False,
    ),
    ReplyRule(
        r"\b5\.4\.5\b|Daily (user )?sending (quota|limit)",
        Diagnosis(
            "Gmail daily sending limit reached",
            "The account reached Google's daily sending limit (5.4.5).",
            "Sending resumes within 24 hours; the limits are listed at "
            "https://support.google.com/a/answer/166852.",
        ),
        Effect.THROTTLE,
        3600,
    ),
    ReplyRule(
        r"not enabled for (IMAP|POP)|(IMAP|POP) access is disabled",
        Diagnosis(
            "IMAP or POP is off for this Gmail account",
            "Gmail answered that the account is not enabled for IMAP (or POP) access.",
            "Turn it on in Gmail > Settings > Forwarding and POP/IMAP (Workspace: the admin "
            "console must allow IMAP/POP for the user), then fetch again.",
        ),
    ),
    ReplyRule(
        r"Please log in via your web browser|Web login required",
        Diagnosis(
            "Gmail wants a sign-in in the browser",
            "Google blocked the login until the account owner signs in on the web once.",
            "Sign in to Gmail in a browser as the mailbox's user, then press Connect your Gmail "
            "account again.",
        ),
    ),
    ReplyRule(
        r"Too many simultaneous connections",
        Diagnosis(
            "Too many IMAP connections",
            "Gmail allows up to 15 simultaneous IMAP connections per account; other mail "
            "clients of the account use the rest.",
            "Close other IMAP clients of the account; mailgate retries with back-off.",
        ),
    ),
    ReplyRule(
        r"\[THROTTLED\]|Account exceeded command or bandwidth limits",
        Diagnosis(
            "Gmail is throttling this account",
            "Gmail limits how much an account may download over IMAP per day.",
            "Wait; mailgate retries with back-off. Raise Poll Interval if it recurs.",
        ),
    ),
    ReplyRule(
        r"4\.7\.0.*Too many login attempts",
        Diagnosis(
            "Too many login attempts",
            "Gmail is throttling logins for this account.",
            "Wait a few minutes before trying again; mailgate pauses sending meanwhile.",
        ),
        Effect.THROTTLE,
        60,
        anywhere=False,
    ),
)
