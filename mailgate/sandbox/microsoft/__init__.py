"""The Microsoft identity platform v2.0 endpoints: authorize (+ sign-in and consent pages), token, discovery, keys.

Paths, parameters, response fields and error shapes follow Microsoft's documentation of the
authorization code, refresh token and client credentials flows; docs/sandbox.md lists each
behaviour with its source.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from mailgate.sandbox.microsoft.consent import ConsentStep
from mailgate.sandbox.microsoft.discovery import Discovery
from mailgate.sandbox.microsoft.errors import Replies
from mailgate.sandbox.microsoft.issuer import TokenIssuer
from mailgate.sandbox.microsoft.signin import SignIn
from mailgate.sandbox.microsoft.token import TokenEndpoint

if TYPE_CHECKING:
    from mailgate.sandbox.state import SandboxState


class MicrosoftIdentity:
    """The Microsoft endpoints over a `SandboxState`: `discovery`, `sign_in`, `consent`, `token`."""

    def __init__(self, state: SandboxState, stopping: threading.Event) -> None:
        replies = Replies(state)
        self.discovery = Discovery(state, replies)
        self.consent = ConsentStep(state, replies)
        self.sign_in = SignIn(state, replies, self.consent)
        self.token = TokenEndpoint(state, replies, TokenIssuer(state), stopping)
