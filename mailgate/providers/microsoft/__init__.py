"""Microsoft identity platform + Exchange Online (Outlook OAuth Authentication)."""

from mailgate.providers.base import Limits, MailDefaults, Provider
from mailgate.providers.microsoft.errors import REPLIES
from mailgate.providers.microsoft.flow import MicrosoftFlow

# Reference: https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
GLOBAL = MailDefaults(
    "smtp.office365.com",
    587,
    "starttls",
    "outlook.office365.com",
    993,
    "outlook.office365.com",
    995,
)
# Reference: https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/pop3-and-imap4/pop3-and-imap4
US_GOVERNMENT = MailDefaults(
    "smtp.office365.us", 587, "starttls", "outlook.office365.us", 993, "outlook.office365.us", 995
)
CHINA = MailDefaults(
    "smtp.partner.outlook.cn", 587, "starttls", "partner.outlook.cn", 993, "partner.outlook.cn", 995
)

# Reference: https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits
LIMITS = Limits(
    per_minute=30, recipients_per_day=10_000, connections=3, max_message_bytes=35 * 1024 * 1024
)

PROVIDER = Provider(
    key="microsoft",
    label="Microsoft 365 / Outlook",
    auth_method="outlook",
    connect_label="Connect your Outlook account",
    defaults=GLOBAL,
    limits=LIMITS,
    callback_path="/oauth/microsoft/callback",
    clouds={"global": GLOBAL, "usgov": US_GOVERNMENT, "china": CHINA},
    flow=MicrosoftFlow(),
    replies=REPLIES,
)
