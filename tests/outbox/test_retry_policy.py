"""The back-off schedule and the reply catalogue, as pure functions."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.outbox.diagnosis import Action, classify
from mailgate.outbox.retry import backoff_delay, next_attempt
from mailgate.providers.replies import diagnose_reply
from mailgate.transports.base import Reply, TransportError

pytestmark = pytest.mark.nodb


def test_the_back_off_doubles_from_one_minute_up_to_an_hour():
    middle = [backoff_delay(n, base=60, cap=3600, rand=lambda: 0.5) for n in range(1, 10)]
    assert middle == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


@given(st.integers(min_value=1, max_value=50), st.floats(min_value=0, max_value=1))
def test_jitter_stays_within_twenty_percent(retries, r):
    exact = min(60 * 2 ** (retries - 1), 3600)
    delay = backoff_delay(retries, base=60, cap=3600, rand=lambda: r)
    assert exact * 0.8 - 1e-9 <= delay <= exact * 1.2 + 1e-9


def test_the_next_attempt_never_goes_past_the_maximum_age(settings):
    settings.MAILGATE_OUTBOX_MAX_AGE = 2 * 86400
    created = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    late = created + dt.timedelta(days=2) - dt.timedelta(seconds=30)
    assert next_attempt(created, late, 12) == created + dt.timedelta(days=2)
    assert next_attempt(created, created + dt.timedelta(days=2), 13) is None


def _error(code, text, step="data"):
    reply = Reply.parse(code, text)
    return TransportError(str(reply), permanent=code >= 500, step=step, reply=reply)


@pytest.mark.parametrize(
    ("code", "text", "action"),
    [
        (
            535,
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
            Action.HOLD,
        ),
        (535, "5.7.3 Authentication unsuccessful [host]", Action.HOLD),
        (535, "5.7.8 Error: authentication failed", Action.HOLD),
        (554, "5.2.252 SendAsDenied; a not allowed to send as b", Action.HOLD),
        (
            554,
            "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
            Action.HOLD,
        ),
        (530, "5.7.57 Client not authenticated to send mail.", Action.HOLD),
        (432, "4.3.2 Concurrent connections limit exceeded.", Action.THROTTLE),
        (
            554,
            "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            Action.THROTTLE,
        ),
        (550, "5.4.5 Daily user sending limit exceeded.", Action.THROTTLE),
        (451, "4.7.1 Greylisted", Action.DEFER),
        (421, "4.4.2 Connection dropped", Action.DEFER),
        (550, "5.1.1 User unknown", Action.FAIL),
        (552, "5.3.4 Message too big", Action.FAIL),
    ],
)
def test_the_catalogue_classifies_known_replies(code, text, action):
    verdict = classify(_error(code, text))
    assert verdict.action == action
    assert verdict.diagnosis


def test_token_errors_hold_when_permanent_and_defer_when_transient():
    dead = TransportError("no token", permanent=True, step="token", diagnosis="Reconnect")
    flaky = TransportError("timeout", permanent=False, step="token")
    assert classify(dead).action == Action.HOLD
    assert classify(flaky).action == Action.DEFER


def test_connection_and_tls_errors_defer():
    assert classify(TransportError("refused", step="connect")).action == Action.DEFER
    assert classify(TransportError("bad cert", step="tls")).action == Action.DEFER


@pytest.mark.parametrize(
    ("provider", "code", "text"),
    [
        (
            "microsoft",
            535,
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.",
        ),
        (None, 554, "5.2.252 SendAsDenied; a not allowed to send as b"),
        ("google", 550, "5.4.5 Daily user sending limit exceeded."),
        (None, 550, "5.1.1 User unknown"),
    ],
)
def test_the_outbox_and_test_connection_explain_a_reply_in_the_same_words(provider, code, text):
    error = _error(code, text)
    explained = diagnose_reply(provider, str(error.reply))
    assert explained is not None
    assert classify(error, provider).diagnosis == explained.as_text()


def test_a_hold_reason_gives_the_server_reply_before_the_fix():
    error = _error(535, "5.7.8 Error: authentication failed")
    reason = classify(error).hold_reason(error)
    head, fix = reason.split(" Fix: ")
    assert head.endswith("Server reply: 535 5.7.8 Error: authentication failed")
    assert fix.startswith("Check Username and Password")
