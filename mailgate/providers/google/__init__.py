"""Google OAuth 2.0 + Gmail (Gmail OAuth Authentication)."""

from mailgate.providers.base import Limits, MailDefaults, Provider
from mailgate.providers.google.errors import REPLIES
from mailgate.providers.google.flow import GoogleFlow

# Reference: https://developers.google.com/gmail/imap/imap-smtp
DEFAULTS = MailDefaults(
    "smtp.gmail.com", 587, "starttls", "imap.gmail.com", 993, "pop.gmail.com", 995
)

# Reference: https://support.google.com/a/answer/166852 (Workspace: 2,000 messages a day per user)
LIMITS = Limits(
    per_minute=60, recipients_per_day=2_000, connections=10, max_message_bytes=25 * 1024 * 1024
)

PROVIDER = Provider(
    key="google",
    label="Google / Gmail",
    auth_method="gmail",
    connect_label="Connect your Gmail account",
    defaults=DEFAULTS,
    limits=LIMITS,
    callback_path="/oauth/google/callback",
    flow=GoogleFlow(),
    replies=REPLIES,
)
