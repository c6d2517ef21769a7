"""What a delivery error means for the queue: send later, slow down, hold the server, or fail.

Known replies come from the providers' catalogue (mailgate.providers.replies), which Test
Connection reads too; what no entry decides, the error's step and reply class decide here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.providers.replies import Effect, match_reply
from mailgate.transports.base import TransportError

# The outbox's name for what happens next: DEFER, THROTTLE, HOLD or FAIL.
Action = Effect


@dataclass(frozen=True)
class Verdict:
    action: Action
    diagnosis: str
    pause: float = 0.0  # THROTTLE: seconds to pause the server

    def hold_reason(self, error: TransportError) -> str:
        """The server's hold reason: the diagnosis with the server's reply before its fix."""
        reply = str(error.reply) if error.reply.code is not None else str(error)
        head, sep, fix = self.diagnosis.partition(" Fix: ")
        return f"{head} Server reply: {reply}{sep}{fix}"


def classify(error: TransportError, provider_key: str | None = None) -> Verdict:
    """The action for a delivery error: the catalogue first, then the step and the reply class."""
    reply = error.reply
    rule = match_reply(provider_key, str(reply) or str(error))
    if rule is not None and rule.effect is not None:
        return Verdict(rule.effect, rule.diagnosis.as_text(), rule.pause)
    known = error.diagnosis or (rule.diagnosis.as_text() if rule is not None else "")
    if error.step == "token":
        if error.permanent:
            return Verdict(
                Action.HOLD, known or "The OAuth grant cannot be used: reconnect the account."
            )
        return Verdict(Action.DEFER, known or "The token endpoint failed for now.")
    if error.step == "auth" and error.permanent:
        return Verdict(Action.HOLD, known or "Authentication with the server is not possible.")
    if error.step in ("connect", "tls") and error.permanent and reply.code is None:
        # Configuration problems (no STARTTLS offered, no host): nothing a retry could fix.
        return Verdict(Action.HOLD, known or str(error))
    if error.step in ("mail", "rcpt", "data") and error.permanent and reply.code is None:
        # Found by the client before the server was asked (an address that is not ASCII for a
        # server without SMTPUTF8): this message can never go through this server.
        return Verdict(Action.FAIL, known or str(error))
    if reply.code is not None and reply.code >= 500:
        return Verdict(Action.FAIL, known or "The server refused the message permanently.")
    return Verdict(Action.DEFER, known or "A temporary problem; retrying later.")
