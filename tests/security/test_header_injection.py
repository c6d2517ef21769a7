"""Attack 1: header injection through every header-bearing field, by the characters Python's email
package breaks lines at (VT, FF, FS, GS, RS, NEL, U+2028, U+2029), not only CR and LF."""

from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.api.models import APIKey
from mailgate.outbox.compose import InvalidMessage, MessageSpec, is_one_line, parse_raw
from mailgate.outbox.models import OutgoingMessage

BREAKERS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r", "\n", "\x00"]


@pytest.fixture
def api(db: None) -> Client:
    _, secret = APIKey.issue("attacker")
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.fixture
def server(make_server: Any) -> Any:
    return make_server(name="main")


def post(api: Client, body: dict[str, Any]) -> Any:
    return api.post("/api/v1/messages", body, content_type="application/json")


BASE = {"from": "app@example.com", "to": ["a@example.org"], "text": "body"}


def injected(breaker: str) -> str:
    return f"Invoice{breaker}X-Injected: yes{breaker}{breaker}Fake body"


@pytest.mark.parametrize("breaker", BREAKERS, ids=[hex(ord(c)) for c in BREAKERS])
@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("subject", lambda v: {"subject": v}),
        ("headers['X-Note']", lambda v: {"headers": {"X-Note": v}}),
        ("from", lambda v: {"from": f'"{v}" <app@example.com>'}),
        ("to[0]", lambda v: {"to": [f'"{v}" <a@example.org>']}),
        ("cc[0]", lambda v: {"cc": [f'"{v}" <c@example.org>']}),
        ("reply_to", lambda v: {"reply_to": f'"{v}" <r@example.org>'}),
    ],
)
def test_a_line_breaking_character_in_a_header_field_is_refused_with_422(
    api: Client, server: Any, breaker: str, field: str, body: Any
) -> None:
    response = post(api, {**BASE, **body(injected(breaker))})
    assert response.status_code == 422, response.content
    errors = response.json()["errors"]
    assert any(name.startswith(field) for name in errors), errors
    assert OutgoingMessage.objects.count() == 0


def test_a_plain_subject_still_goes_out_as_one_header(api: Client, server: Any) -> None:
    response = post(api, {**BASE, "subject": "Invoice\tnumber 42 \u2013 café"})
    assert response.status_code == 201, response.content
    sent = email.message_from_bytes(
        OutgoingMessage.objects.get().raw_bytes, policy=email.policy.default
    )
    assert sent["Subject"] == "Invoice\tnumber 42 \u2013 café"
    assert "X-Injected" not in sent


@pytest.mark.parametrize(
    "raw",
    [
        b"From: app@example.com\r\nTo: b@example.org\rX-Injected: yes\r\nSubject: s\r\n\r\nhi\r\n",
        b"From: app@example.com\r\nTo: b@example.org\nX-Injected: yes\r\nSubject: s\r\n\r\nhi\r\n",
        b"From: app@example.com\r\nTo: b@example.org\r\nSubject: a\x0bX-Injected: yes\r\n\r\nhi\r\n",
        "From: app@example.com\r\nTo: b@example.org\r\nSubject: a\u2028X: y\r\n\r\nhi\r\n".encode(),
        b"From: app@example.com\r\nTo: b@example.org\r\nSubject: =?utf-8?q?a=0BX-Injected=3A_y?=\r\n"
        b"\r\nhi\r\n",
    ],
    ids=["bare-cr", "bare-lf-beside-crlf", "vt-in-header", "u2028-in-header", "encoded-vt"],
)
def test_a_raw_message_with_a_smuggled_line_break_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_raw(raw)
    assert any(name.startswith("raw") for name in caught.value.errors)


def test_a_raw_message_with_lf_line_ends_throughout_is_accepted_with_crlf() -> None:
    composed = parse_raw(b"From: app@example.com\nTo: b@example.org\nSubject: s\n\nhi\n")
    assert b"\r\nSubject: s\r\n" in composed.raw
    assert b"\n" not in composed.raw.replace(b"\r\n", b"")


def test_a_raw_message_through_the_api_with_a_bare_cr_is_refused_with_422(
    api: Client, server: Any
) -> None:
    raw = "From: app@example.com\r\nTo: b@example.org\rBcc: x@evil.example\r\n\r\nhi\r\n"
    response = post(api, {"raw": raw})
    assert response.status_code == 422
    assert "raw" in response.json()["errors"]


HEADER_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60
)
DISPLAY = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=HEADER_TEXT, note=HEADER_TEXT, name=DISPLAY, to_name=DISPLAY)
def test_what_is_sent_has_exactly_the_headers_asked_for(
    subject: str, note: str, name: str, to_name: str
) -> None:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    to_quoted = to_name.replace("\\", "\\\\").replace('"', '\\"')
    spec = MessageSpec(
        from_address=f'"{quoted}" <app@example.com>',
        to=[f'"{to_quoted}" <a@example.org>'],
        subject=subject,
        headers={"X-Note": note},
        text="body",
    )
    try:
        composed = spec.compose()
    except InvalidMessage as exc:
        # Refused only for a reason: a line break or control character, or an unusable value.
        assert exc.errors
        return
    assert all(is_one_line(v) for v in (subject, note))
    sent = email.message_from_bytes(composed.raw, policy=email.policy.default)
    assert sorted(k.lower() for k in sent) == sorted(
        [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "x-note",
            "content-type",
            "content-transfer-encoding",
            "mime-version",
        ]
    )
    assert sent.get_content().rstrip("\r\n") == "body"
    assert sent["From"].addresses[0].addr_spec == "app@example.com"
    assert sent["To"].addresses[0].addr_spec == "a@example.org"


@pytest.mark.parametrize("breaker", BREAKERS, ids=[hex(ord(c)) for c in BREAKERS])
def test_one_line_refuses_every_line_breaking_character(breaker: str) -> None:
    assert not is_one_line(f"a{breaker}b")
    assert is_one_line("a\tb \u2013 café")
