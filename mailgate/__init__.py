"""mailgate: send and receive mail through OAuth 2.0 mailboxes (Microsoft 365, Gmail)."""

import warnings

import authlib.deprecate

__version__ = "0.1.0"

# Authlib announces future module moves (joserfc, httpx2) on import, with an "always" filter of its
# own; an operator can do nothing about them, so they stay out of the service's output.
warnings.filterwarnings(
    "ignore",
    message=r"(authlib\.jose module|The httpx module) is deprecated",
    category=authlib.deprecate.AuthlibDeprecationWarning,
)
