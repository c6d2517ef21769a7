"""What Microsoft identity platform (AADSTS) errors and Exchange Online replies mean, and what fixes them.

Codes and texts change over time (https://learn.microsoft.com/entra/identity-platform/reference-error-codes):
decisions branch on the numeric code or the OAuth `error` value, never on the text.
"""

from __future__ import annotations

from mailgate.providers.base import Diagnosis
from mailgate.providers.errors import (
    ClientCredentialsInvalid,
    ReconnectRequired,
    TokenError,
    TokenUnavailable,
)
from mailgate.providers.http import TokenEndpointError, TransientHTTPError, aadsts_codes
from mailgate.providers.replies import Effect, ReplyRule, transient_diagnosis

APP = "Azure portal > Microsoft Entra ID > App registrations > (your app)"
REDIRECT_FIX = (
    f"Copy the OAuth2 Redirect URL from this form into {APP} > Authentication > Web > Redirect URIs "
    "(exactly: scheme, host, port, path and case), save, wait a few minutes, then press Connect "
    "again. Behind a reverse proxy, set MAILGATE_PUBLIC_URL to the public https address."
)
SECRET_VALUE_FIX = (
    f"In {APP} > Certificates & secrets create a new client secret and copy its Value (shown only "
    "once, not the Secret ID) into Client Secret on this form, with its expiry date in Client "
    "Secret Expires On."
)
RECONNECT_FIX = "Press Connect your Outlook account and sign in again as the mailbox's user."

# Reference: https://learn.microsoft.com/entra/identity-platform/reference-error-codes
AADSTS: dict[int, Diagnosis] = {
    50011: Diagnosis(
        "Redirect URI mismatch (AADSTS50011)",
        "The redirect URI mailgate sent is not registered in the app registration.",
        REDIRECT_FIX,
    ),
    500113: Diagnosis(
        "No redirect URI registered (AADSTS500113)",
        "The app registration has no redirect URI at all.",
        REDIRECT_FIX,
    ),
    50194: Diagnosis(
        "Single-tenant app used with /common (AADSTS50194)",
        "The app registration accepts accounts of its own directory only, and the request went to "
        "the shared /common endpoint.",
        "Put your tenant ID (Directory (tenant) ID on the app's Overview page) or your verified "
        "domain into Tenant on this form, or leave Tenant empty so mailgate uses the Username's "
        "domain.",
    ),
    700016: Diagnosis(
        "Application not found in the directory (AADSTS700016)",
        "No app registration with this Client ID exists in the tenant the request went to.",
        f"Copy the Application (client) ID from {APP} > Overview into Client ID, and make sure "
        "Tenant names the directory that owns the app (or make the app multitenant).",
    ),
    90002: Diagnosis(
        "Tenant not found (AADSTS90002)",
        "The tenant in the request does not exist in this cloud (a mail domain that is not a "
        "verified domain, a typo in the tenant ID, or the wrong national cloud).",
        "Put the Directory (tenant) ID from the app's Overview page, or the *.onmicrosoft.com "
        "domain, into Tenant, and check National Cloud.",
    ),
    7000215: Diagnosis(
        "Invalid client secret (AADSTS7000215)",
        "The Client Secret is not a valid secret of this app: most often the Secret ID was pasted "
        "instead of the secret's Value, or the secret belongs to another app.",
        SECRET_VALUE_FIX,
    ),
    7000222: Diagnosis(
        "Client secret expired (AADSTS7000222)",
        "The app registration's client secret has passed its expiry date. Mail that needs a "
        "token waits until it is replaced.",
        SECRET_VALUE_FIX + " The grant stays valid: no reconnect is needed.",
    ),
    7000218: Diagnosis(
        "Client secret missing (AADSTS7000218)",
        "The app is a confidential (Web) client and the token request carried no client secret.",
        SECRET_VALUE_FIX,
    ),
    700025: Diagnosis(
        "Public client given a secret (AADSTS700025)",
        "The app registration is configured as a public client (Mobile and desktop platform), so "
        "it must not receive a secret.",
        f"In {APP} > Authentication, add the redirect URL under the Web platform (not Mobile and "
        "desktop) and set Allow public client flows to No.",
    ),
    65001: Diagnosis(
        "Consent missing (AADSTS65001)",
        "The user or an administrator has not consented to the permissions mailgate asks for.",
        f"Press Connect again and accept the permissions, or have an administrator press Grant "
        f"admin consent in {APP} > API permissions.",
    ),
    65004: Diagnosis(
        "Consent declined (AADSTS65004)",
        "The user pressed Cancel on the permissions page, so no token was issued.",
        "Press Connect your Outlook account again and choose Accept. If your organisation does "
        "not allow users to consent, ask an administrator to grant admin consent.",
    ),
    50105: Diagnosis(
        "User not assigned to the app (AADSTS50105)",
        "The enterprise application requires assignment and this user is not assigned to it.",
        "In Azure portal > Microsoft Entra ID > Enterprise applications > (your app) > Users and "
        "groups, add the mailbox's user (or set Assignment required to No in Properties).",
    ),
    50126: Diagnosis(
        "Wrong user name or password (AADSTS50126)",
        "The sign-in at Microsoft failed: the user name or password is wrong.",
        "Sign in again with the mailbox user's correct password.",
    ),
    50020: Diagnosis(
        "Account not in this tenant (AADSTS50020)",
        "The signed-in account belongs to another directory or is a personal account.",
        "Sign in with the account of the Username, or set Tenant to common/organizations/"
        "consumers to match the app's supported account types.",
    ),
    54005: Diagnosis(
        "Authorization code already used (AADSTS54005)",
        "The code from Microsoft was redeemed twice (for example after reloading the callback).",
        "Press Connect your Outlook account again.",
    ),
    70008: Diagnosis(
        "Grant expired (AADSTS70008)",
        "The authorization code or refresh token expired before it was used.",
        RECONNECT_FIX,
    ),
    700082: Diagnosis(
        "Refresh token expired after inactivity (AADSTS700082)",
        "The grant was not used for 90 days and Microsoft expired it.",
        RECONNECT_FIX,
    ),
    50173: Diagnosis(
        "Grant revoked (AADSTS50173)",
        "The grant was revoked: the user's password was reset or an administrator or the user "
        "revoked the sessions.",
        RECONNECT_FIX,
    ),
    70000: Diagnosis(
        "Grant no longer valid (AADSTS70000)",
        "The refresh token is not valid for the requested permissions any more.",
        RECONNECT_FIX,
    ),
    501481: Diagnosis(
        "PKCE verifier mismatch (AADSTS501481)",
        "The code verifier did not match the challenge of the sign-in request (a sign-in started "
        "in another browser tab or session).",
        "Press Connect your Outlook account again and finish in the same tab.",
    ),
    9002313: Diagnosis(
        "Malformed request (AADSTS9002313)",
        "Microsoft could not read the sign-in request.",
        "Check Client ID and Tenant for stray spaces or characters, then press Connect again.",
    ),
    70011: Diagnosis(
        "Invalid scope (AADSTS70011)",
        "A requested permission is not valid for this app or cloud.",
        "Check National Cloud, and that the app's API permissions list Office 365 Exchange Online "
        "SMTP.Send / IMAP.AccessAsUser.All / POP.AccessAsUser.All (delegated).",
    ),
    700022: Diagnosis(
        "Scopes of two resources (AADSTS700022)",
        "The token request mixed permissions of two APIs.",
        "Use only Outlook (Exchange Online) permissions for this server.",
    ),
    28000: Diagnosis(
        "Scopes of two resources (AADSTS28000)",
        "The token request mixed permissions of two APIs.",
        "Use only Outlook (Exchange Online) permissions for this server.",
    ),
    53003: Diagnosis(
        "Blocked by Conditional Access (AADSTS53003)",
        "A Conditional Access policy of the tenant does not allow this sign-in or token.",
        "In Microsoft Entra admin center > Sign-in logs find the policy that applied, then exclude "
        "this app or user, or satisfy its conditions; then press Connect again.",
    ),
    50076: Diagnosis(
        "Multi-factor authentication required (AADSTS50076)",
        "The tenant now requires MFA for this user, which needs an interactive sign-in.",
        RECONNECT_FIX + " Complete the MFA prompt.",
    ),
    50079: Diagnosis(
        "MFA registration required (AADSTS50079)",
        "The user must register for multi-factor authentication.",
        RECONNECT_FIX + " Complete the MFA registration.",
    ),
    9002332: Diagnosis(
        "Work-only app used with /consumers (AADSTS9002332)",
        "The app registration accepts work or school accounts only, and the request went to "
        "/consumers (personal Microsoft accounts).",
        "Set Tenant to your tenant ID or domain, or change the app's Supported account types to "
        "include personal Microsoft accounts.",
    ),
    9001023: Diagnosis(
        "Grant type not supported on this endpoint (AADSTS9001023)",
        "This request needs a tenant-specific endpoint.",
        "Put your tenant ID or domain into Tenant.",
    ),
    650057: Diagnosis(
        "Permission not configured (AADSTS650057)",
        "The app registration does not list the Exchange Online permissions mailgate asks for.",
        f"In {APP} > API permissions add Office 365 Exchange Online > Delegated: SMTP.Send, "
        "IMAP.AccessAsUser.All (or POP.AccessAsUser.All), then grant consent.",
    ),
}

# OAuth `error` values without a known AADSTS code.
# Reference: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow#error-codes-for-authorization-endpoint-errors
BY_ERROR: dict[str, Diagnosis] = {
    "access_denied": AADSTS[65004],
    "consent_required": AADSTS[65001],
    "interaction_required": Diagnosis(
        "Interactive sign-in required",
        "Microsoft needs the user to sign in interactively (MFA, consent or a policy).",
        RECONNECT_FIX,
    ),
    "invalid_client": Diagnosis(
        "Client authentication failed", "The Client ID or Client Secret is wrong.", SECRET_VALUE_FIX
    ),
    "unauthorized_client": AADSTS[700016],
    "invalid_grant": Diagnosis(
        "Grant no longer valid",
        "Microsoft refused the stored grant (revoked, expired, or the password was reset).",
        RECONNECT_FIX,
    ),
    "invalid_scope": AADSTS[70011],
    "invalid_request": Diagnosis(
        "Invalid request",
        "Microsoft refused the request as malformed.",
        "Check Client ID, Tenant and National Cloud on this form, then press Connect again.",
    ),
    "temporarily_unavailable": Diagnosis(
        "Microsoft is temporarily unavailable",
        "The sign-in service is busy.",
        "Try again in a few minutes.",
    ),
    "server_error": Diagnosis(
        "Microsoft had an internal error", "The sign-in service failed.", "Try again later."
    ),
}

GRANT_CODES = {54005, 70008, 700082, 50173, 70000, 65001, 50076, 50079, 53003, 501481, 70011}
CLIENT_CODES = {7000215, 7000222, 7000218, 700025, 700016, 90002, 50194, 9002332, 650057}


def explain(error: str, description: str) -> Diagnosis:
    for code in aadsts_codes(description):
        if code in AADSTS:
            return AADSTS[code]
    return BY_ERROR.get(
        error,
        Diagnosis(
            f"Microsoft refused the request ({error or 'unknown error'})",
            "Microsoft's message is shown below.",
            "Check Client ID, Client Secret, Tenant and National Cloud on this form.",
        ),
    )


def classify(exc: Exception) -> TokenError:
    """A failed token refresh as one of the token lifecycle's errors."""
    if isinstance(exc, TransientHTTPError):
        return TokenUnavailable(
            f"Microsoft's token endpoint is unavailable: {exc}",
            diagnosis=transient_diagnosis(str(exc)),
            code=exc.error or str(exc.status or "network"),
        )
    if not isinstance(exc, TokenEndpointError):
        return TokenError(str(exc))
    diagnosis = explain(exc.error, exc.description)
    codes = set(exc.codes)
    code = f"AADSTS{exc.codes[0]}" if exc.codes else exc.error
    message = diagnosis.title
    if codes & CLIENT_CODES or exc.error in ("invalid_client", "unauthorized_client"):
        return ClientCredentialsInvalid(message, diagnosis=diagnosis.as_text(), code=code)
    if codes & GRANT_CODES or exc.error in (
        "invalid_grant",
        "interaction_required",
        "consent_required",
        "invalid_scope",
    ):
        return ReconnectRequired(message, diagnosis=diagnosis.as_text(), code=code)
    return TokenError(message, diagnosis=diagnosis.as_text(), code=code)


SMTP_AUTH_FIX = (
    "Enable SMTP AUTH: Microsoft 365 admin center > Users > Active users > (the user) > Mail > "
    "Manage email apps > Authenticated SMTP, and for the whole organisation Exchange admin "
    "center > Settings > Mail flow (or PowerShell: Set-CASMailbox -Identity <mailbox> "
    "-SmtpClientAuthenticationDisabled $false; Set-TransportConfig "
    "-SmtpClientAuthenticationDisabled $false). Security defaults also block it."
)

# Exchange Online replies, recognised on any server (their texts are Exchange's own), except the
# IMAP/POP one, whose words other servers use too.
# Reference: https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
# Reference: https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
# Reference: https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits
REPLIES: tuple[ReplyRule, ...] = (
    ReplyRule(
        r"SmtpClientAuthentication is disabled for the Tenant",
        Diagnosis(
            "SMTP AUTH is disabled for this tenant",
            "Exchange Online refuses authenticated SMTP submission for the whole organisation "
            "(5.7.139).",
            "In Exchange admin center > Settings > Mail flow uncheck 'Turn off SMTP AUTH protocol "
            "for your organization' (PowerShell: Set-TransportConfig "
            "-SmtpClientAuthenticationDisabled $false), or allow it for this mailbox alone: "
            "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false "
            "(https://aka.ms/smtp_auth_disabled).",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"SmtpClientAuthentication is disabled for the Mailbox",
        Diagnosis(
            "SMTP AUTH is disabled for this mailbox",
            "Exchange Online refuses authenticated SMTP submission for this mailbox (5.7.139).",
            "Check Authenticated SMTP in Microsoft 365 admin center > Users > Active users > (the "
            "user) > Mail > Manage email apps (PowerShell: Set-CASMailbox -Identity <mailbox> "
            "-SmtpClientAuthenticationDisabled $false).",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"security defaults",
        Diagnosis(
            "Blocked by security defaults",
            "The tenant's security defaults block SMTP AUTH.",
            "Replace security defaults with Conditional Access policies that allow SMTP AUTH for "
            "this mailbox, then " + SMTP_AUTH_FIX,
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"5\.7\.139.*basic authentication is disabled",
        Diagnosis(
            "Password sign-in is turned off",
            "Exchange Online no longer accepts a password for SMTP AUTH in this tenant (5.7.139).",
            "Set Authenticate Using to Outlook OAuth Authentication and press Connect your "
            "Outlook account.",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"\b5\.7\.139\b",
        Diagnosis(
            "SMTP AUTH is refused for this account",
            "Exchange Online refused the authentication (5.7.139): SMTP AUTH is disabled for the "
            "tenant or the mailbox, or a policy blocks it.",
            SMTP_AUTH_FIX,
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"SendAsDenied|not allowed to send as|5\.2\.252",
        Diagnosis(
            "Send As denied",
            "The mailbox may not send with this From address.",
            "Grant Send As on the address (Exchange admin center > Recipients > Mailboxes > "
            "Delegation, or Add-RecipientPermission <from> -AccessRights SendAs -Trustee "
            "<mailbox>) and list it in the server's Send As Addresses, or send From the mailbox's "
            "own address.",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"Sender throttled due to continuous",
        Diagnosis(
            "Mailbox throttled by Exchange",
            "Exchange throttles this mailbox after repeated errors; Microsoft decides how long.",
            "Fix what keeps failing (see the failed messages: often bad recipients or a refused "
            "Send As); mailgate pauses the server for an hour.",
        ),
        Effect.THROTTLE,
        3600,
    ),
    ReplyRule(
        r"SubmissionQuotaExceeded|submission quota",
        Diagnosis(
            "Daily recipient quota reached",
            "The mailbox reached its recipient rate limit (10,000 recipients in 24 hours for "
            "Exchange Online).",
            "Sending resumes when the rolling 24-hour window allows it; spread mail over more "
            "mailboxes if this recurs.",
        ),
        Effect.THROTTLE,
        3600,
    ),
    ReplyRule(
        r"Concurrent connections limit|sender thread limit",
        Diagnosis(
            "Too many connections",
            "Exchange allows 3 concurrent SMTP connections per mailbox (4.3.2).",
            "Wait a minute before trying again (mailgate pauses sending meanwhile); set "
            "Concurrent Connections to 3 or fewer if this recurs.",
        ),
        Effect.THROTTLE,
        60,
    ),
    ReplyRule(
        r"\b5\.7\.57\b|not authenticated to send",
        Diagnosis(
            "Not authenticated",
            "Exchange refused the sender because the session was not authenticated (5.7.57).",
            "Use Connection Security TLS (STARTTLS) on port 587 and OAuth authentication, with a "
            "mailbox that has an Exchange Online licence.",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"\b5\.7\.3\b",
        Diagnosis(
            "Exchange rejected the token",
            "The access token was not accepted for this mailbox (5.7.3): the Username is not the "
            "signed-in user's mailbox (or one it may send as), the app lacks the SMTP.Send "
            "permission, or the grant was revoked.",
            f"Check that Username is the mailbox of the account that connected, that {APP} > API "
            "permissions lists Office 365 Exchange Online > SMTP.Send, then press Connect again.",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"\b5\.2\.2\b.*(mailbox full|QuotaExceeded)",
        Diagnosis(
            "Sending mailbox full",
            "The sending mailbox is over its storage quota; Exchange keeps a copy of each sent "
            "message in Sent Items (5.2.2).",
            "Free space in the mailbox (Sent Items, Deleted Items) or raise its quota.",
        ),
        Effect.HOLD,
    ),
    ReplyRule(
        r"AUTHENTICATE failed|Authentication failure: unknown user name",
        Diagnosis(
            "IMAP/POP authentication refused",
            "Exchange did not accept the token for the mailbox: IMAP or POP is disabled for it, "
            "the Username is not the connected account's mailbox, or the app lacks the "
            "IMAP.AccessAsUser.All / POP.AccessAsUser.All permission.",
            "Enable IMAP/POP in Microsoft 365 admin center > Users > (the user) > Mail > Manage "
            "email apps (Outlook.com: Settings > Mail > Forwarding and IMAP), check the API "
            "permissions, then press Connect again.",
        ),
        Effect.HOLD,
        anywhere=False,
    ),
    ReplyRule(
        r"User is authenticated but not connected",
        Diagnosis(
            "Signed in, but the mailbox cannot be opened",
            "Exchange accepted the token but could not open a mailbox for it: the Username is "
            "not the mailbox of the connected account, or the account has no Exchange Online "
            "mailbox (license) yet.",
            "Set Username to the connected account's own mailbox address (a shared mailbox needs "
            "FullAccess for that account) and press Connect your Outlook account again.",
        ),
    ),
    ReplyRule(
        r"Server Unavailable\. ?\d*|\[UNAVAILABLE\]",
        Diagnosis(
            "Exchange mailbox server unavailable",
            "Exchange Online could not reach the mailbox's server for the moment.",
            "Nothing to change: mailgate retries with back-off.",
        ),
    ),
)
