"""Validation and building of outgoing messages: every problem is refused at the door, naming the field."""

from __future__ import annotations

import email.policy
import email.utils
import functools
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser

from mailgate.addresses import EmailNotValidError, check_address

# 7bit transfer encodings only: every server accepts the result without 8BITMIME; CRLF line ends.
POLICY = email.policy.SMTP.clone(cte_type="7bit")
# A message with an address whose local part is not ASCII (jörg@corp.local) is an internationalised
# message (RFC 6532): its headers are UTF-8, since an RFC 2047 word is not allowed in an address; it
# can only be delivered with SMTPUTF8 (RFC 6531). The body keeps 7bit transfer encodings.
UTF8_POLICY = email.policy.SMTPUTF8.clone(cte_type="7bit")

# How a raw message's headers are decoded when read (RFC 2047 words; UTF-8, RFC 6532).
DECODING = email.policy.default

# Header names RFC 5322 allows (printable ASCII except the colon).
HEADER_NAME_RE = re.compile(r"^[!-9;-~]+$")
# Headers mailgate writes itself; callers set them through the named fields instead.
RESERVED_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
}
CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*$")
MAX_LINE = 998  # RFC 5322 2.1.1
# Longest body line the email package sends as 7bit rather than quoted-printable (POLICY's 78).
MAX_7BIT_LINE = POLICY.max_line_length or MAX_LINE


class InvalidMessage(ValueError):
    """A message refused at enqueue time; `errors` maps each bad field to what is wrong and the fix."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))

    @classmethod
    def one(cls, field_name: str, problem: str) -> InvalidMessage:
        return cls({field_name: problem})


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, kw_only=True)
class MessageSpec:
    """What a caller asks mailgate to send: the fields of a message, or a complete RFC 5322
    message in `raw` (then from_address/to/cc/bcc, when given, are its envelope).

    The one definition of a message's fields: the REST API's body maps into it, enqueue() takes
    it, the idempotency fingerprint hashes it and compose() builds the bytes from it.
    """

    from_address: str | None = None
    to: str | Sequence[str] | None = None
    cc: str | Sequence[str] | None = None
    bcc: str | Sequence[str] | None = None
    reply_to: str | Sequence[str] | None = None
    subject: str = ""
    text: str | None = None
    html: str | None = None
    headers: Mapping[str, str] | None = None
    attachments: Sequence[Attachment] = ()
    raw: bytes | str | None = None

    def compose(self) -> Composed:
        """Validate and build the message (or check the raw one); InvalidMessage names the field."""
        if self.raw is not None:
            if (
                any(v is not None for v in (self.text, self.html))
                or self.headers
                or self.attachments
                or self.subject
            ):
                raise InvalidMessage.one(
                    "raw",
                    "give either a raw message or the fields subject/text/html/headers/attachments",
                )
            return parse_raw(
                self.raw, sender=self.from_address, to=self.to, cc=self.cc, bcc=self.bcc
            )
        if not self.from_address:
            raise InvalidMessage.one("from", "is required: the sender's address")
        return build(self)

    @property
    def body_field(self) -> str:
        """The field that makes the message large, for an error about its size."""
        if self.raw is not None:
            return "raw"
        return "attachments" if self.attachments else "text"


@dataclass(frozen=True)
class Mailbox:
    """A parsed address: display name and the address with an ASCII (IDNA) domain."""

    name: str
    address: str

    def formatted(self) -> str:
        if self.address.isascii():
            return email.utils.formataddr((self.name, self.address))
        # formataddr() takes ASCII addresses only; this form is for a UTF-8 header (RFC 6532).
        local, _, domain = self.address.rpartition("@")
        return str(Address(display_name=self.name, username=local, domain=domain))

    @property
    def needs_smtputf8(self) -> bool:
        """True for a non-ASCII local part: only SMTPUTF8 (RFC 6531) carries it."""
        return not self.address.isascii()


@dataclass
class Composed:
    """A message ready for the queue."""

    sender: Mailbox
    to: list[Mailbox]
    cc: list[Mailbox]
    bcc: list[Mailbox]
    reply_to: list[Mailbox]
    subject: str
    message_id: str
    raw: bytes
    errors: dict[str, str] = field(default_factory=dict)
    # The From header's address when it differs from the sender (a raw message's envelope).
    author: Mailbox | None = None

    @property
    def recipients(self) -> list[str]:
        return [m.address for m in (*self.to, *self.cc, *self.bcc)]


def is_one_line(value: str) -> bool:
    """True when a header value is one line with no control character (TAB aside).

    Python's email package breaks lines not only at CR and LF but at every character that
    str.splitlines() splits on (VT, FF, FS, GS, RS, NEL, U+2028, U+2029), so a subject holding one of
    them would become a new header or a replaced body once the message is written.
    """
    if value and value.splitlines() != [value]:
        return False
    return _CONTROL.search(value) is None


# Unicode's control characters (category Cc: U+0000-U+001F and U+007F-U+009F), TAB aside: one
# regular expression search instead of a unicodedata.category() call per character.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


LINE_BREAK_PROBLEM = (
    "contains a line break or a control character (CR, LF, NUL, VT, FF, U+2028, ...): "
    "header values must be one line (this is how header injection works, so it is refused)"
)


def _no_line_breaks(field_name: str, value: str) -> None:
    if not is_one_line(value):
        raise InvalidMessage.one(field_name, LINE_BREAK_PROBLEM)


def parse_mailbox(field_name: str, value: str) -> Mailbox:
    """One address, `a@b.example` or `Name <a@b.example>`; IDN domains become their ASCII form.

    A non-ASCII local part (`jörg@corp.local`, RFC 6531) is kept in UTF-8 (NFC): such a message is
    delivered only through a server that offers SMTPUTF8, and fails naming that otherwise.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidMessage.one(field_name, "is empty: give an address such as name@example.com")
    found = _checked_mailbox(value)
    if isinstance(found, str):
        raise InvalidMessage.one(field_name, found)
    return found


# The answer depends on the value alone, and an application sends from the same few addresses (and
# often to the same ones) again and again: checking one takes a third of building a message.
@functools.lru_cache(maxsize=4096)
def _checked_mailbox(value: str) -> Mailbox | str:
    """The parsed address, or what is wrong with it (for parse_mailbox, which names the field)."""
    if not is_one_line(value):
        return LINE_BREAK_PROBLEM
    pairs = email.utils.getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1]:
        return (
            f"{value!r} is not one address: use 'name@example.com' or 'Name <name@example.com>' "
            "(one per list entry)"
        )
    name, address = pairs[0]
    if "<" in address or ">" in address or "@" not in address:
        return f"{value!r} is not a valid address"
    try:
        checked = check_address(address)
    except EmailNotValidError as exc:
        return f"{address!r} is not a valid address: {exc}"
    if checked.ascii_email is not None:
        return Mailbox(name.strip(), checked.ascii_email)
    return Mailbox(name.strip(), f"{checked.local_part}@{checked.ascii_domain}")


def _joined(name: str, address: str) -> str:
    """One entry of a comma-separated list again, for parse_mailbox()."""
    if address.isascii():
        return email.utils.formataddr((name, address))
    # formataddr() takes ASCII addresses only (a UTF-8 local part, RFC 6531).
    return f'"{email.utils.quote(name)}" <{address}>' if name else address


def parse_mailboxes(field_name: str, values: str | Iterable[str] | None) -> list[Mailbox]:
    if values is None:
        return []
    if isinstance(values, str):
        _no_line_breaks(field_name, values)
        values = [_joined(*pair) for pair in email.utils.getaddresses([values]) if any(pair)]
    result = []
    for i, value in enumerate(values):
        result.append(parse_mailbox(f"{field_name}[{i}]", value))
    return result


def new_message_id(domain: str) -> str:
    """A globally unique Message-ID in the sender's domain."""
    return f"<{uuid.uuid4().hex}@{domain}>"


def _check_headers(headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
    checked = []
    for name, value in (headers or {}).items():
        label = f"headers[{name!r}]"
        if not isinstance(name, str) or not HEADER_NAME_RE.match(name):
            raise InvalidMessage.one(
                label, "is not a valid header name (printable ASCII without ':' or spaces)"
            )
        if name.lower() in RESERVED_HEADERS:
            raise InvalidMessage.one(
                label, "is set by mailgate: use the from/to/cc/subject/... fields instead"
            )
        if not isinstance(value, str):
            raise InvalidMessage.one(label, "must be a string")
        _no_line_breaks(label, value)
        if len(name) + len(value) + 2 > MAX_LINE:
            raise InvalidMessage.one(label, f"is longer than {MAX_LINE} characters")
        checked.append((name, value))
    return checked


def _check_attachment(index: int, attachment: Attachment) -> tuple[str, str]:
    label = f"attachments[{index}]"
    if not attachment.filename or not attachment.filename.strip():
        raise InvalidMessage.one(f"{label}.filename", "is empty: give the file name")
    _no_line_breaks(f"{label}.filename", attachment.filename)
    if "/" in attachment.filename or "\\" in attachment.filename:
        raise InvalidMessage.one(
            f"{label}.filename", "must be a bare file name without a directory"
        )
    if not CONTENT_TYPE_RE.match(attachment.content_type or ""):
        raise InvalidMessage.one(
            f"{label}.content_type",
            f"{attachment.content_type!r} is not a MIME type such as application/pdf",
        )
    maintype, subtype = attachment.content_type.lower().split("/", 1)
    if maintype == "multipart":
        raise InvalidMessage.one(f"{label}.content_type", "a multipart type cannot be attached")
    return maintype, subtype


def _set_header(message: EmailMessage, name: str, value: str) -> None:
    """Add a header: an ASCII value as it is, any other through the header registry (RFC 2047)."""
    # The header registry parses every value into a structured object and refolds it when the
    # message is written: ~0.2 ms a header, half of the building time. An ASCII value needs neither;
    # the SMTP policy still refolds one longer than 78 characters through the registry on output.
    limit = POLICY.header_max_count(name)
    if limit is not None and len(message.get_all(name, [])) >= limit:
        raise InvalidMessage.one(
            f"headers[{name!r}]", f"may appear only {limit} time(s) in a message: give it once"
        )
    if value.isascii():
        message.set_raw(name, value)
    else:
        message[name] = value


def _set_body(
    message: EmailMessage,
    text: str | None,
    html: str | None,
    attachments: Sequence[Attachment],
    kinds: list[tuple[str, str]],
) -> None:
    """The MIME body through the email package: encodings chosen per part, multipart as needed."""
    if html is not None and text is not None:
        message.set_content(text)
        message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    else:
        message.set_content(text or "")
    for attachment, (maintype, subtype) in zip(attachments, kinds, strict=True):
        message.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )


def _plain_ascii_bytes(message: EmailMessage, text: str) -> bytes | None:
    """The bytes _set_body() + as_bytes() write for ASCII text with short lines; None for other text.

    Such text goes out as 7bit, line by line: the email package's choice for it (its
    contentmanager._encode_text), written here without building a MIME part, which took half the
    building time. tests/outbox/test_compose.py checks that both ways give the same bytes.
    """
    if not text.isascii():
        return None
    lines = text.encode("ascii").splitlines()
    if max(map(len, lines), default=0) > MAX_7BIT_LINE:
        return None
    message.set_raw("Content-Type", 'text/plain; charset="utf-8"')
    message.set_raw("Content-Transfer-Encoding", "7bit")
    message.set_raw("MIME-Version", "1.0")
    policy = message.policy
    head = b"".join(policy.fold_binary(name, value) for name, value in message.raw_items())
    return head + b"\r\n" + b"\r\n".join(lines) + b"\r\n"


def build(spec: MessageSpec) -> Composed:
    """Validate every field and build the RFC 5322 bytes (Bcc is never written into the headers)."""
    from_box = parse_mailbox("from", spec.from_address or "")
    to_boxes = parse_mailboxes("to", spec.to)
    cc_boxes = parse_mailboxes("cc", spec.cc)
    bcc_boxes = parse_mailboxes("bcc", spec.bcc)
    reply_boxes = parse_mailboxes("reply_to", spec.reply_to)
    if not (to_boxes or cc_boxes or bcc_boxes):
        raise InvalidMessage.one("to", "no recipient: give at least one address in to, cc or bcc")
    subject, text, html, attachments = spec.subject, spec.text, spec.html, spec.attachments
    if not isinstance(subject, str):
        raise InvalidMessage.one("subject", "must be a string")
    _no_line_breaks("subject", subject)
    extra = _check_headers(spec.headers)
    kinds = [_check_attachment(i, a) for i, a in enumerate(attachments)]

    boxes = [from_box, *to_boxes, *cc_boxes, *bcc_boxes, *reply_boxes]
    international = any(box.needs_smtputf8 for box in boxes)
    message = EmailMessage(policy=UTF8_POLICY if international else POLICY)
    _set_header(message, "From", from_box.formatted())
    if to_boxes:
        _set_header(message, "To", ", ".join(m.formatted() for m in to_boxes))
    if cc_boxes:
        _set_header(message, "Cc", ", ".join(m.formatted() for m in cc_boxes))
    if reply_boxes:
        _set_header(message, "Reply-To", ", ".join(m.formatted() for m in reply_boxes))
    _set_header(message, "Subject", subject)
    _set_header(message, "Date", email.utils.formatdate(localtime=False, usegmt=True))
    message_id = new_message_id(from_box.address.rsplit("@", 1)[1])
    _set_header(message, "Message-ID", message_id)
    for name, value in extra:
        _set_header(message, name, value)
    raw = None
    if html is None and not attachments:
        raw = _plain_ascii_bytes(message, text or "")
    if raw is None:
        _set_body(message, text, html, attachments, kinds)
        raw = message.as_bytes(policy=message.policy)
    return Composed(from_box, to_boxes, cc_boxes, bcc_boxes, reply_boxes, subject, message_id, raw)


_LINE_ENDS = re.compile(r"[\r\n]")


def _decoded(message: Message, name: str) -> list[str]:
    """The values of a raw message's headers of that name, decoded (RFC 2047 words, UTF-8).

    A value in plain ASCII without an encoded word decodes to itself once unfolded, so only the
    others go through the header registry (a third of the relay's CPU for a message went there).
    """
    wanted = name.lower()
    values = []
    for key, value in message.raw_items():
        if key.lower() != wanted:
            continue
        text = str(value)
        if "=?" in text or not text.isascii():
            values.append(str(DECODING.header_fetch_parse(key, value)))
        else:
            values.append(_LINE_ENDS.sub("", text))
    return values


def _header_boxes(message: Message, name: str) -> list[Mailbox]:
    values = _decoded(message, name)
    if not values:
        return []
    boxes = []
    for i, (display, address) in enumerate(email.utils.getaddresses(values)):
        if not address:
            continue
        try:
            value = email.utils.formataddr((display, address))
        except UnicodeEncodeError:  # an internationalised address (RFC 6532): checked alone
            value = address
        boxes.append(parse_mailbox(f"raw.{name}[{i}]", value))
    return boxes


def _crlf_line_ends(data: bytes) -> bytes:
    """The message with CRLF line ends; a bare CR, or a bare LF beside CRLF, is refused.

    A message written with LF line ends throughout (as Python's and Django's as_bytes() do) is
    unambiguous and gets CRLF; a lone CR or a mix is how a message is smuggled past one parser
    and read differently by the next server, so it is refused.
    """
    without_crlf = data.replace(b"\r\n", b"")
    if b"\r" in without_crlf:
        raise InvalidMessage.one(
            "raw", "contains a bare CR (carriage return without line feed): end lines with CRLF"
        )
    if b"\n" in without_crlf:
        if len(without_crlf) != len(data):
            raise InvalidMessage.one(
                "raw", "mixes CRLF and bare LF line ends: end every line with CRLF"
            )
        data = data.replace(b"\n", b"\r\n")
    return data


def _check_raw_headers(message: Message) -> None:
    """Every header of a raw message is one line once unfolded, before and after decoding."""
    for name, value in message.raw_items():
        unfolded = re.sub(r"\r?\n(?=[ \t])", "", str(value))
        # Decoding changes only RFC 2047 words and bytes that are not ASCII; the header registry's
        # parse costs about as much as the rest of the checks, so other headers skip it.
        decoded = unfolded
        if "=?" in unfolded or not unfolded.isascii():
            decoded = str(DECODING.header_fetch_parse(name, value))
        if not is_one_line(unfolded) or not is_one_line(decoded):
            raise InvalidMessage.one(
                f"raw.{name}",
                "contains a line break or a control character (VT, FF, NUL, U+2028, ...): "
                "header values must be one line (this is how header injection works)",
            )


def _parsed(data: bytes) -> Message:
    """The message (CRLF line ends) as BytesParser reads it, with its defects.

    Parsed without the header registry (compat32): the structure and its defects are the same,
    and only the headers parse_raw() reads are decoded (DECODING), not every header at every
    look-up. A message that is neither multipart nor message/* has no structure in its body: the
    parser would only read it line by line (a third of the parse for a message of 10 KB) and
    keep it as the payload, so only the header block is parsed and the rest becomes the payload,
    as the parser would have made it. Anything else (a multipart or message/* type, a defect in
    the header block, a header block the parser ends elsewhere) is parsed whole, as before.
    """
    parser = BytesParser(policy=email.policy.compat32)
    end = data.find(b"\r\n\r\n")
    if end > 0 and not data.startswith(b"\r\n"):
        head = parser.parsebytes(data[: end + 4], headersonly=True)
        if (
            not head.defects
            and head.get_payload() == ""
            and head.get_content_maintype() not in ("multipart", "message")
        ):
            # BytesParser decodes the bytes as ASCII with surrogateescape, byte by byte.
            head.set_payload(data[end + 4 :].decode("ascii", "surrogateescape"))
            return head
    return parser.parsebytes(data)


def parse_raw(
    raw: bytes | str,
    *,
    sender: str | None = None,
    to: str | Sequence[str] | None = None,
    cc: str | Sequence[str] | None = None,
    bcc: str | Sequence[str] | None = None,
) -> Composed:
    """Validate a caller-built RFC 5322 message; envelope recipients default to To + Cc + Bcc."""
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidMessage.one("raw", f"cannot be encoded: {exc}") from None
    else:
        data = bytes(raw)
    if not data.strip():
        raise InvalidMessage.one("raw", "is empty: give a complete RFC 5322 message")
    data = _crlf_line_ends(data)
    header_block = data.split(b"\r\n\r\n", 1)[0]
    for number, line in enumerate(header_block.split(b"\r\n"), 1):
        if len(line) > MAX_LINE:
            raise InvalidMessage.one("raw", f"header line {number} is longer than {MAX_LINE} bytes")
    message = _parsed(data)
    if message.defects:
        raise InvalidMessage.one(
            "raw",
            "is not a well-formed RFC 5322 message: "
            + ", ".join(type(d).__name__ for d in message.defects),
        )
    _check_raw_headers(message)
    header_from = _header_boxes(message, "From")
    if len(header_from) != 1:
        raise InvalidMessage.one("raw", "needs exactly one address in its From header")
    from_box = parse_mailbox("from", sender) if sender else header_from[0]
    header_to = _header_boxes(message, "To")
    header_cc = _header_boxes(message, "Cc")
    header_bcc = _header_boxes(message, "Bcc")
    if to is not None or cc is not None or bcc is not None:
        to_boxes = parse_mailboxes("to", to)
        cc_boxes = parse_mailboxes("cc", cc)
        bcc_boxes = parse_mailboxes("bcc", bcc)
    else:
        to_boxes, cc_boxes, bcc_boxes = header_to, header_cc, header_bcc
    if not (to_boxes or cc_boxes or bcc_boxes):
        raise InvalidMessage.one(
            "to", "no recipient: the raw message has no To/Cc/Bcc and none was given"
        )
    changed = False
    # Header lines to put before the message's own (a missing Message-ID or Date), when nothing
    # else changes: the message's bytes are then kept as they came, without writing it anew.
    added: list[bytes] = []
    if "Bcc" in message:
        del message["Bcc"]
        changed = True
    message_id = "".join(_decoded(message, "Message-ID")[:1]).strip()
    if not re.fullmatch(r"<[^<>\s]+@[^<>\s]+>", message_id):
        if "Message-ID" in message:
            del message["Message-ID"]
            changed = True
        message_id = new_message_id(header_from[0].address.rsplit("@", 1)[1])
        message["Message-ID"] = message_id
        added.append(f"Message-ID: {message_id}\r\n".encode("ascii"))
    if "Date" not in message:
        date = email.utils.formatdate(localtime=False, usegmt=True)
        message["Date"] = date
        added.append(f"Date: {date}\r\n".encode("ascii"))
    if changed:
        data = message.as_bytes(policy=email.policy.SMTP)
    elif added:
        data = b"".join(added) + data
    subject = "".join(_decoded(message, "Subject")[:1])
    reply_to = _header_boxes(message, "Reply-To")
    return Composed(
        from_box,
        to_boxes,
        cc_boxes,
        bcc_boxes,
        reply_to,
        subject,
        message_id,
        data,
        author=header_from[0],
    )
