"""The bytes build() writes: RFC 5322 lines, RFC 2047 words for non-ASCII text, IDNA domains, folding."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.outbox import compose
from mailgate.outbox.compose import (
    POLICY,
    Attachment,
    Composed,
    InvalidMessage,
    MessageSpec,
    _set_body,
)

pytestmark = pytest.mark.nodb


def build(**fields: Any) -> Composed:
    """compose.build() of a MessageSpec with these fields."""
    return compose.build(MessageSpec(**fields))


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _lines(raw: bytes) -> list[bytes]:
    assert b"\n" not in raw.replace(b"\r\n", b""), "every line ends in CRLF"
    return raw.split(b"\r\n")


def _header_lines(raw: bytes) -> list[bytes]:
    return _lines(raw.split(b"\r\n\r\n", 1)[0])


def test_a_plain_ascii_message_has_exactly_the_expected_headers_and_body() -> None:
    built = build(
        from_address="App <app@example.com>",
        to=["a@example.org"],
        subject="Invoice 42",
        text="hi\n",
    )
    head, _, body = built.raw.partition(b"\r\n\r\n")
    names = [line.split(b":", 1)[0] for line in _lines(head)]
    assert names == [
        b"From",
        b"To",
        b"Subject",
        b"Date",
        b"Message-ID",
        b"Content-Type",
        b"Content-Transfer-Encoding",
        b"MIME-Version",
    ]
    assert b"From: App <app@example.com>" in head and b"Subject: Invoice 42" in head
    assert body == b"hi\r\n"
    parsed = _parse(built.raw)
    assert parsed["Message-ID"] == built.message_id
    assert email.utils.parsedate_to_datetime(parsed["Date"]).tzinfo is not None
    assert (
        parsed.get_content_type() == "text/plain" and parsed["Content-Transfer-Encoding"] == "7bit"
    )


def test_non_ascii_subjects_and_names_are_rfc_2047_words_that_decode_back() -> None:
    built = build(
        from_address="Zoë Müller <zoe@example.com>",
        to=["Jürgen Groß <j@example.org>", "山田太郎 <taro@example.jp>"],
        cc=["Ἀθηνᾶ <a@example.gr>"],
        reply_to=['"Renée, Support" <help@example.com>'],
        subject="Grüße — your order № 42 is ready ✓",
        text="Grüße\n",
        headers={"X-Note": "café"},
    )
    assert built.raw.isascii(), "7bit: every byte is ASCII"
    assert all(len(line) <= 78 for line in _header_lines(built.raw))
    parsed = _parse(built.raw)
    assert parsed["Subject"] == "Grüße — your order № 42 is ready ✓"
    assert parsed["From"].addresses[0].display_name == "Zoë Müller"
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [
        ("Jürgen Groß", "j@example.org"),
        ("山田太郎", "taro@example.jp"),
    ]
    assert parsed["Cc"].addresses[0].display_name == "Ἀθηνᾶ"
    assert parsed["Reply-To"].addresses[0].display_name == "Renée, Support"
    assert parsed["X-Note"] == "café"
    assert parsed.get_content().replace("\r\n", "\n") == "Grüße\n"


def test_an_international_domain_is_written_in_its_ascii_form_in_headers_and_envelope() -> None:
    built = build(
        from_address="Büro <info@bücher.example>",
        to=["kunde@müller.example"],
        subject="x",
        text="x",
    )
    assert built.sender.address == "info@xn--bcher-kva.example"
    assert built.recipients == ["kunde@xn--mller-kva.example"]
    parsed = _parse(built.raw)
    assert parsed["From"].addresses[0].addr_spec == "info@xn--bcher-kva.example"
    assert parsed["To"].addresses[0].addr_spec == "kunde@xn--mller-kva.example"
    assert built.message_id.endswith("@xn--bcher-kva.example>")


def test_long_headers_are_folded_within_78_characters_and_unfold_to_the_same_text() -> None:
    subject = " ".join(f"word{i}" for i in range(80))
    recipients = [f"Recipient Number {i} <recipient.{i}@example.org>" for i in range(40)]
    built = build(from_address="app@example.com", to=recipients, subject=subject, text="x")
    assert all(len(line) <= 78 for line in _header_lines(built.raw))
    parsed = _parse(built.raw)
    assert parsed["Subject"] == subject
    assert [a.addr_spec for a in parsed["To"].addresses] == [
        f"recipient.{i}@example.org" for i in range(40)
    ]


def test_a_subject_with_one_overlong_word_stays_within_the_998_limit() -> None:
    subject = "x" * 2000
    built = build(from_address="app@example.com", to=["a@example.org"], subject=subject, text="x")
    assert all(len(line) <= 998 for line in _lines(built.raw))
    assert _parse(built.raw)["Subject"] == subject


def test_text_that_looks_like_an_encoded_word_arrives_as_it_was_meant() -> None:
    built = build(
        from_address="app@example.com",
        to=["a@example.org"],
        subject="=?utf-8?q?caf=C3=A9?=",
        text="x",
    )
    assert _parse(built.raw)["Subject"] == "café"


def test_a_unique_header_given_twice_is_refused_with_its_name() -> None:
    with pytest.raises(InvalidMessage) as caught:
        build(
            from_address="app@example.com",
            to=["a@example.org"],
            text="x",
            headers={"Sender": "a@example.com", "sender": "b@example.com"},
        )
    assert list(caught.value.errors) == ["headers['sender']"]


def test_html_alternative_and_an_attachment_with_a_non_ascii_name() -> None:
    built = build(
        from_address="app@example.com",
        to=["a@example.org"],
        subject="Report",
        text="plain ✓\n",
        html="<p>html ✓</p>\n",
        attachments=[Attachment("résumé.pdf", b"%PDF-1.4 \x00\xff", "application/pdf")],
    )
    assert built.raw.isascii()
    assert all(len(line) <= 998 for line in _lines(built.raw))
    parsed = _parse(built.raw)
    body = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert body is not None and html is not None
    assert body.get_content().replace("\r\n", "\n") == "plain ✓\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>html ✓</p>\n"
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_filename() == "résumé.pdf"
    assert attachment.get_content() == b"%PDF-1.4 \x00\xff"


# Printable text without line breaks, as a subject or a display name can hold it.
_one_line = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
        min_size=1,
        max_size=200,
    )
    .map(lambda s: " ".join(s.split()))
    .filter(bool)
)


@settings(max_examples=150, deadline=None)
@given(subject=_one_line, name=_one_line)
def test_any_one_line_subject_and_display_name_decode_back_to_themselves(
    subject: str, name: str
) -> None:
    built = build(
        from_address=email.utils.formataddr((name, "app@example.com")),
        to=["a@example.org"],
        subject=subject,
        text="x",
    )
    assert all(len(line) <= 998 for line in _lines(built.raw))
    parsed = _parse(built.raw)
    assert parsed["Subject"] == subject
    assert parsed["From"].addresses[0].addr_spec == "app@example.com"


def _through_the_email_package(text: str, **fields: str) -> tuple[bytes, bytes]:
    """(build()'s bytes, the bytes of the same message with its body set by the email package)."""
    built = build(
        from_address="app@example.com", to=["a@example.org"], subject="s", text=text, **fields
    )
    head = built.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    message = EmailMessage(policy=POLICY)
    for line in head:
        name, _, value = line.decode("ascii").partition(": ")
        if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version"):
            message.set_raw(name, value)
    _set_body(message, text, None, (), [])
    return built.raw, message.as_bytes(policy=POLICY)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "line one\nline two\n",
        "crlf\r\nand cr\rends\r\n",
        "\n\n\nblank lines\n\n",
        "form\x0cfeed and\x0bvertical tab stay in their line",
        "x" * 78 + "\n" + "y" * 78,
        "x" * 79,
        "tab\tand trailing space \n",
        "non-ASCII: café\n",
    ],
)
def test_plain_text_bytes_are_the_email_packages_bytes(text: str) -> None:
    fast, reference = _through_the_email_package(text)
    assert fast == reference


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=400))
def test_any_ascii_text_gives_the_email_packages_bytes(text: str) -> None:
    fast, reference = _through_the_email_package(text)
    assert fast == reference


# parse_raw() reads a message that is neither multipart nor message/* from its header block alone
# (compose._parsed): the result must be the message BytesParser makes of the whole, defects included.
PARSE_CASES = [
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\nline 2\r\n",
    b"From: a@example.org\r\nSubject: folded\r\n  on two lines\r\n\r\n\r\n\r\nblank lines first\r\n",
    b"From: a@example.org\r\nSubject: \xc3\xa9t\xc3\xa9 8-bit\r\n\r\nbody \xff\xfe bytes\r\n",
    b"From: a@example.org\r\n\r\n",
    b"From: a@example.org\r\n\r\nno final line end",
    b"\r\nFrom: a@example.org\r\n\r\nthe headers are the body\r\n",
    b"\r\n\r\nFrom: a@example.org\r\n",
    b"From: a@example.org\r\nnot a header line\r\nTo: b@example.org\r\n\r\nbody\r\n",
    b" continuation first\r\nFrom: a@example.org\r\n\r\nbody\r\n",
    b"From someone@example.org Mon Jan 1 00:00:00 2024\r\nFrom: a@example.org\r\n\r\nx\r\n",
    b"From: a@example.org\r\nFrom b@example.org late envelope line\r\n\r\nbody\r\n",
    b"From: a@example.org\r\nTo: b@example.org\r\nFrom c@example.org\r\n\r\nbody\r\n",
    b": no name\r\nFrom: a@example.org\r\n\r\nbody\r\n",
    b"From: a@example.org\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n",
    b"From: a@example.org\r\nContent-Type: bogus\r\n\r\nbody\r\n",
    b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
    b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\nno parts at all\r\n",
    b"From: a@example.org\r\nContent-Type: multipart/mixed\r\n\r\nno boundary\r\n",
    b"From: a@example.org\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n",
    b"From: a@example.org\r\nContent-Type: message/delivery-status\r\n\r\nA: 1\r\n\r\nB: 2\r\n",
    b"no headers at all, just text\r\n",
]


@pytest.mark.parametrize("data", PARSE_CASES)
def test_parsed_is_the_whole_parse(data: bytes) -> None:
    fast = compose._parsed(data)
    whole = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
    assert [type(d) for d in fast.defects] == [type(d) for d in whole.defects]
    assert fast.get_unixfrom() == whole.get_unixfrom()
    assert list(fast.raw_items()) == list(whole.raw_items())  # type: ignore[attr-defined]
    assert fast.is_multipart() == whole.is_multipart()
    assert fast.get_payload() == whole.get_payload() or fast.is_multipart()
    assert fast.as_bytes(policy=email.policy.SMTP) == whole.as_bytes(policy=email.policy.SMTP)


@given(st.text())
def test_is_one_line_is_the_category_check(value: str) -> None:
    import unicodedata

    expected = (not value or value.splitlines() == [value]) and not any(
        unicodedata.category(c) == "Cc" and c != "\t" for c in value
    )
    assert compose.is_one_line(value) == expected


MESSAGE_LINES = st.sampled_from(
    [
        "",
        "From: a@example.org",
        "To: b@example.org",
        " folded",
        "From x@example.org",
        "not a header",
        ": nameless",
        "Content-Type: multipart/mixed; boundary=b",
        "Content-Type: message/rfc822",
        "Content-Type: text/plain",
        "--b",
        "--b--",
        "body \xe9",
    ]
)


@given(st.lists(MESSAGE_LINES, max_size=12), st.booleans())
def test_parsed_is_the_whole_parse_of_any_lines(lines: list[str], final_crlf: bool) -> None:
    data = "\r\n".join(lines).encode("utf-8") + (b"\r\n" if final_crlf else b"")
    fast = compose._parsed(data)
    whole = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
    assert [type(d) for d in fast.defects] == [type(d) for d in whole.defects]
    assert fast.get_unixfrom() == whole.get_unixfrom()
    assert list(fast.raw_items()) == list(whole.raw_items())  # type: ignore[attr-defined]
    assert written(fast) == written(whole)


def written(message: email.message.Message) -> bytes | type[Exception]:
    """The message's bytes, or the error writing it raises (a non-ASCII header under compat32)."""
    try:
        return message.as_bytes(policy=email.policy.compat32)
    except Exception as exc:
        return type(exc)
