"""A small client of mailgate's REST API for applications that run elsewhere (httpx only, no Django).

    from mailgate.client import Client

    with Client("https://mailgate.corp.local", api_key) as mailgate:
        sent = mailgate.send(
            sender="erp@contoso.example", to=["a@example.org"], subject="Invoice", text="..."
        )
        mailgate.wait(sent.id)           # until sent, failed, held or cancelled

A send is retried safely: each call carries an Idempotency-Key (one is made when none is given),
so a request repeated after a lost answer queues the message once. Errors raise MailgateError with
the HTTP status, the message and the fields at fault.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

__all__ = ["FINAL_STATUSES", "Attachment", "Client", "InboxPage", "MailgateError", "Message"]

# A message in one of these states will not change by itself any more.
FINAL_STATUSES = frozenset({"sent", "failed", "held", "cancelled"})


class MailgateError(Exception):
    """The API refused a request: `status` (HTTP), `detail`, and `errors` (field -> problem)."""

    def __init__(self, status: int, detail: str, errors: Mapping[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = dict(errors or {})


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes = field(repr=False)
    content_type: str = "application/octet-stream"

    def as_json(self) -> dict[str, str]:
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "content_base64": base64.b64encode(self.content).decode("ascii"),
        }


@dataclass(frozen=True)
class Message:
    """A queued message as the API reports it (`data` holds every field of the answer)."""

    id: int
    status: str
    message_id: str
    server: str
    attempts: int
    last_error: str
    data: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(
            id=int(data["id"]),
            status=str(data.get("status", "")),
            message_id=str(data.get("message_id", "")),
            server=str(data.get("server", "")),
            attempts=int(data.get("attempts") or 0),
            last_error=str(data.get("last_error") or ""),
            data=data,
        )

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class InboxPage:
    """One page of incoming messages in arrival order; `next` is the cursor of the following page."""

    items: list[dict[str, Any]]
    next: str | None


def _addresses(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class Client:
    """mailgate's REST API at `url` (the console's address) with an API key."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        verify: Any = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`url` and `api_key` default to the MAILGATE_URL and MAILGATE_API_KEY variables; `verify`
        is passed to httpx (True, False, or an ssl.SSLContext trusting a private CA)."""
        url = url or os.environ.get("MAILGATE_URL", "")
        api_key = api_key or os.environ.get("MAILGATE_API_KEY", "")
        if not url:
            raise ValueError("url: give mailgate's address, e.g. https://mailgate.corp.local")
        if not api_key:
            raise ValueError("api_key: create one with `mailgate api-keys create --name NAME`")
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            raise MailgateError(
                response.status_code,
                str(body.get("detail") or body.get("title") or response.reason_phrase),
                body.get("errors") if isinstance(body.get("errors"), dict) else None,
            )
        return response

    def send(
        self,
        *,
        sender: str | None = None,
        to: str | Sequence[str] | None = None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        reply_to: str | None = None,
        subject: str = "",
        text: str | None = None,
        html: str | None = None,
        headers: Mapping[str, str] | None = None,
        attachments: Sequence[Attachment] = (),
        raw: str | bytes | None = None,
        server: str | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Queue a message (fields, or a complete RFC 5322 message in `raw`); the queued message."""
        body: dict[str, Any] = {
            "to": _addresses(to),
            "cc": _addresses(cc),
            "bcc": _addresses(bcc),
        }
        if raw is not None:
            body["raw"] = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
        else:
            body.update(subject=subject, headers=dict(headers or {}))
            body["attachments"] = [a.as_json() for a in attachments]
            for name, value in (("text", text), ("html", html), ("reply_to", reply_to)):
                if value is not None:
                    body[name] = value
        if sender is not None:
            body["from"] = sender
        if server is not None:
            body["server"] = server
        key = idempotency_key or str(uuid.uuid4())
        response = self._request("POST", "/messages", json=body, headers={"Idempotency-Key": key})
        return Message.from_json(response.json())

    def get(self, message_id: int) -> Message:
        """The message's current state."""
        return Message.from_json(self._request("GET", f"/messages/{int(message_id)}").json())

    def wait(self, message_id: int, *, timeout: float = 60.0, interval: float = 0.5) -> Message:
        """Poll until the message is sent, failed, held or cancelled; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.get(message_id)
            if message.is_final:
                return message
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"message {message_id} is still {message.status} after {timeout:g} s"
                )
            time.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))

    def inbox(
        self, *, server: str | None = None, after: str | None = None, limit: int = 100
    ) -> InboxPage:
        """One page of incoming mail after the cursor `after` (None: from the start)."""
        params: dict[str, str | int] = {"limit": limit}
        if server is not None:
            params["server"] = server
        if after is not None:
            params["after"] = after
        data = self._request("GET", "/inbox", params=params).json()
        return InboxPage(items=list(data.get("items") or []), next=data.get("next"))

    def inbox_pages(
        self, *, server: str | None = None, after: str | None = None, limit: int = 100
    ) -> Iterator[InboxPage]:
        """The pages of incoming mail after the cursor `after`, until there is nothing more for now.

        Handle every item of a page, then keep its `next`: a restarted poller resumes from the
        cursor it kept and misses nothing.
        """
        cursor = after
        while True:
            page = self.inbox(server=server, after=cursor, limit=limit)
            if page.items:
                yield page
            if not page.items or page.next is None or page.next == cursor:
                return
            cursor = page.next
