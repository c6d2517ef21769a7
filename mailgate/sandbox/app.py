"""The identity server's WSGI application: Microsoft and Google paths, introspection, control API, mail catcher."""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from mailgate.sandbox import pages
from mailgate.sandbox.google import GoogleOAuth
from mailgate.sandbox.interfaces import MailboxDelivery, MailStore
from mailgate.sandbox.microsoft import MicrosoftIdentity
from mailgate.sandbox.params import ControlError
from mailgate.sandbox.state import SandboxState

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("mailgate.sandbox")

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")

URLS = Map(
    [
        Rule("/", endpoint="index"),
        Rule("/error", endpoint="ms_error"),
        Rule("/common/discovery/instance", endpoint="ms_instance"),
        Rule("/<tenant>/discovery/v2.0/keys", endpoint="ms_keys"),
        Rule("/<tenant>/discovery/keys", endpoint="ms_keys"),
        Rule("/<tenant>/v2.0/.well-known/openid-configuration", endpoint="ms_oidc"),
        Rule("/<tenant>/oauth2/v2.0/authorize", endpoint="ms_authorize", methods=["GET", "POST"]),
        Rule("/<tenant>/oauth2/v2.0/token", endpoint="ms_token", methods=["GET", "POST"]),
        Rule("/<tenant>/oauth2/v2.0/logout", endpoint="ms_logout", methods=["GET", "POST"]),
        Rule("/<tenant>/login", endpoint="ms_login", methods=["POST"]),
        Rule("/<tenant>/consent", endpoint="ms_consent", methods=["POST"]),
        Rule("/o/oauth2/v2/auth", endpoint="g_auth", methods=["GET", "POST"]),
        Rule("/o/oauth2/v2/auth/signin", endpoint="g_signin", methods=["POST"]),
        Rule("/o/oauth2/v2/auth/consent", endpoint="g_consent", methods=["POST"]),
        Rule("/token", endpoint="g_token", methods=["POST"]),
        Rule("/revoke", endpoint="g_revoke", methods=["POST"]),
        Rule("/tokeninfo", endpoint="g_tokeninfo", methods=["GET", "POST"]),
        Rule("/sandbox/introspect/<service>", endpoint="introspect", methods=["POST"]),
        Rule("/sandbox/control/<action>", endpoint="control", methods=["GET", "POST"]),
        Rule("/sandbox/messages", endpoint="messages"),
        Rule("/sandbox/messages/<message_id>", endpoint="message"),
    ]
)

# Control operations that only read; they also answer GET.
READ_ONLY = {"snapshot", "clock", "counters", "messages", "message"}


def _is_loopback_name(host: str) -> bool:
    """True for a Host header naming this machine (port aside): 127.x, [::1], localhost."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")


class SandboxApp:
    """WSGI callable; `store`/`delivery` are the mail side's, absent when it does not run."""

    def __init__(
        self,
        state: SandboxState,
        *,
        store: MailStore | None = None,
        delivery: MailboxDelivery | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.delivery = delivery
        self.stopping = threading.Event()
        self.microsoft = MicrosoftIdentity(state, self.stopping)
        self.google = GoogleOAuth(state, self.stopping)
        self.operations = state.operations()
        self.operations.update(
            deliver=self._deliver,
            messages=self._messages,
            message=self._message,
            clear_messages=self._clear_messages,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except HTTPException as exc:
            response = exc.get_response()
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = URLS.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except NotFound:
            return _json(
                {
                    "error": "not_found",
                    "error_description": f"No sandbox endpoint at {request.path}",
                },
                404,
            )
        except MethodNotAllowed as exc:
            return _json(
                {"error": "method_not_allowed", "error_description": str(exc.description)}, 405
            )
        ms, google = self.microsoft, self.google
        handlers: dict[str, Callable[[], Response]] = {
            "index": lambda: self._index(request),
            "ms_error": lambda: ms.discovery.error_lookup(request),
            "ms_instance": lambda: ms.discovery.instance_discovery(request),
            "ms_keys": lambda: ms.discovery.keys(request),
            "ms_oidc": lambda: ms.discovery.openid_configuration(request, args["tenant"]),
            "ms_authorize": lambda: ms.sign_in.authorize(request, args["tenant"]),
            "ms_token": lambda: ms.token.token(request, args["tenant"]),
            "ms_logout": lambda: ms.sign_in.logout(request, args["tenant"]),
            "ms_login": lambda: ms.sign_in.login(request, args["tenant"]),
            "ms_consent": lambda: ms.consent.consent(request, args["tenant"]),
            "g_auth": lambda: google.sign_in.auth(request),
            "g_signin": lambda: google.sign_in.sign_in(request),
            "g_consent": lambda: google.sign_in.consent(request),
            "g_token": lambda: google.tokens.token(request),
            "g_revoke": lambda: google.tokens.revoke(request),
            "g_tokeninfo": lambda: google.tokens.tokeninfo(request),
            "introspect": lambda: self._introspect(request, args["service"]),
            "control": lambda: self._control(request, args["action"]),
            "messages": lambda: self._messages_page(request),
            "message": lambda: self._message_raw(args["message_id"]),
        }
        return handlers[endpoint]()

    # -- sandbox endpoints -------------------------------------------------------------------

    def _index(self, request: Request) -> Response:
        demo = self.state.demo()
        body = (
            "<h1>mailgate sandbox</h1><p>Offline stand-in for the Microsoft identity platform,"
            " Google OAuth, Exchange Online SMTP and IMAP/POP.</p><ul>"
            f"<li>Demo tenant: {pages.escape(str(demo.get('tenant_domain', '')))}"
            f" ({pages.escape(str(demo.get('tenant_id', '')))})</li>"
            f"<li>Demo user: {pages.escape(str(demo.get('user', '')))}</li>"
            "<li><a href='/sandbox/messages'>Messages accepted by the SMTP server</a></li></ul>"
        )
        return Response(
            pages.page("mailgate sandbox", body, brand="mailgate sandbox"),
            content_type="text/html; charset=utf-8",
        )

    def _introspect(self, request: Request, service: str) -> Response:
        """RFC 7662 token introspection for Dovecot's oauth2 passdb (`introspection_mode = post`)."""
        if service not in ("imap", "pop3", "smtp"):
            return _json(
                {
                    "error": "invalid_request",
                    "error_description": "service must be imap, pop3 or smtp",
                },
                404,
            )
        token = request.form.get("token", "")
        if not token and request.authorization and request.authorization.type == "bearer":
            token = request.authorization.token or ""
        # Invalid tokens get HTTP 200 {"active": false}: Dovecot treats anything else as an
        # internal failure (a temporary error for the client), not as bad credentials.
        return _json(self.state.policy.introspect(token, service))

    def _control(self, request: Request, action: str) -> Response:
        if request.remote_addr not in LOOPBACK:
            return _json(
                {
                    "error": "forbidden",
                    "error_description": "the control API answers loopback clients only",
                },
                403,
            )
        # A web page the developer visits can reach 127.0.0.1 too: through DNS rebinding (its
        # own name resolving to 127.0.0.1, so Host is that name) or a cross-site form post (which
        # cannot send application/json without a CORS preflight the sandbox never answers).
        if not _is_loopback_name(request.host):
            return _json(
                {
                    "error": "forbidden",
                    "field": "Host",
                    "error_description": "the control API answers requests for a loopback host "
                    "name only (127.0.0.1, [::1] or localhost)",
                },
                403,
            )
        if request.method == "POST" and request.mimetype != "application/json":
            return _json(
                {
                    "error": "unsupported_media_type",
                    "field": "Content-Type",
                    "error_description": "control actions take a JSON body: send "
                    "Content-Type: application/json",
                },
                415,
            )
        operation = self.operations.get(action)
        if operation is None:
            return _json(
                {
                    "error": "unknown_action",
                    "error_description": f"no control action {action!r}; known: {', '.join(sorted(self.operations))}",
                },
                404,
            )
        if request.method == "GET" and action not in READ_ONLY:
            return _json(
                {"error": "method_not_allowed", "error_description": f"use POST for {action}"}, 405
            )
        params: dict[str, Any] = dict(request.args.items())
        if request.method == "POST" and request.get_data():
            try:
                body = json.loads(request.get_data())
            except ValueError:
                return _json(
                    {
                        "error": "invalid_json",
                        "error_description": "the request body must be a JSON object",
                    },
                    400,
                )
            if not isinstance(body, dict):
                return _json(
                    {
                        "error": "invalid_json",
                        "error_description": "the request body must be a JSON object",
                    },
                    400,
                )
            params.update(body)
        try:
            result = operation(params)
        except ControlError as exc:
            return _json(
                {"error": "invalid_parameter", "field": exc.field, "error_description": str(exc)},
                exc.status,
            )
        return _json(result)

    def _require_store(self) -> MailStore:
        if self.store is None:
            raise ControlError(
                "messages", "the sandbox SMTP server is not running in this process", 503
            )
        return self.store

    def _deliver(self, params: dict[str, Any]) -> dict[str, Any]:
        """Put a message into a sandbox user's mailbox (IMAP/POP): `to` and `raw`, or `subject`/`body`."""
        to = str(params.get("to") or "").strip().lower()
        if not to:
            raise ControlError("to", "is required: the mailbox address to deliver into")
        if not self.state.policy.mailbox_exists(to):
            raise ControlError("to", f"{to} is not a sandbox mailbox")
        if self.delivery is None:
            raise ControlError(
                "to",
                "mailbox delivery needs Dovecot, which is not running (apt-get install dovecot-imapd dovecot-pop3d)",
                503,
            )
        raw = params.get("raw")
        if raw is None:
            sender = str(params.get("from") or "sender@example.org")
            raw = (
                f"From: {sender}\r\nTo: {to}\r\nSubject: {params.get('subject', 'Sandbox message')}\r\n"
                f"Message-ID: <{threading.get_ident()}.{self.state.now():.6f}@sandbox.localhost>\r\n"
                f"\r\n{params.get('body', '')}\r\n"
            )
        self.delivery.deliver(to, str(raw).encode())
        self.state.count("deliveries")
        return {"delivered": to}

    def _messages(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._require_store().list()

    def _message(self, params: dict[str, Any]) -> dict[str, Any]:
        message_id = str(params.get("id") or "")
        found = self._require_store().get(message_id)
        if found is None:
            raise ControlError("id", f"no message {message_id!r}", 404)
        return found

    def _clear_messages(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require_store().clear()
        return {}

    def _messages_page(self, request: Request) -> Response:
        rows = self.store.list() if self.store is not None else []
        return Response(pages.messages(rows), content_type="text/html; charset=utf-8")

    def _message_raw(self, message_id: str) -> Response:
        found = self.store.get(message_id) if self.store is not None else None
        if found is None:
            return Response("no such message", status=404, content_type="text/plain; charset=utf-8")
        return Response(str(found.get("raw", "")), content_type="text/plain; charset=utf-8")
