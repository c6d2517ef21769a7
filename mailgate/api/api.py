"""The REST API, served by django-ninja with its OpenAPI document at /api/v1/openapi.json."""

import logging
from functools import partial

from django.db import OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError

from mailgate.api.auth import APIKeyError, BearerKey, api_key_error_response
from mailgate.api.inbox import router as inbox_router
from mailgate.outbox.api import router as messages_router
from mailgate.servers.api import router as servers_router

api = NinjaAPI(
    title="mailgate",
    version="1",
    description="Send and receive mail through OAuth 2.0 mailboxes. Every call needs "
    "`Authorization: Bearer <API key>`.",
    urls_namespace="api",
    docs_url=None,
    auth=BearerKey(),
)
api.add_exception_handler(APIKeyError, partial(api_key_error_response, api))


def _http_error(request: HttpRequest, exc: HttpError | type[HttpError]) -> HttpResponse:
    """ninja's own refusals; a body that is not JSON names the body."""
    status = exc.status_code if isinstance(exc, HttpError) else 400
    body: dict[str, object] = {"detail": str(exc)}
    if str(exc).startswith("Cannot parse request body"):
        problem = "is not JSON: send a JSON object with Content-Type: application/json"
        body = {"detail": f"body: {problem}", "errors": {"body": problem}}
    return api.create_response(request, body, status=status)


api.add_exception_handler(HttpError, _http_error)


def _not_found(request: HttpRequest, exc: Http404 | type[Http404]) -> HttpResponse:
    """404 naming the path parameter that found nothing (get_object_or_404 in a view)."""
    match = request.resolver_match
    params = dict(match.kwargs) if match else {}
    errors = {name: f"nothing has {name} {value}" for name, value in params.items()}
    detail = "; ".join(f"{name}: {text}" for name, text in errors.items()) or "Not Found"
    return api.create_response(request, {"detail": detail, "errors": errors}, status=404)


api.add_exception_handler(Http404, _not_found)
# Servers and incoming mail are read with a `read` or `admin` key; messages check the scope per
# operation (a `send` key queues and reads its own).
api.add_router("/servers", servers_router, auth=BearerKey(actions={"read_all"}))
api.add_router("/messages", messages_router)
api.add_router("/inbox", inbox_router, auth=BearerKey(actions={"read_all"}))


log = logging.getLogger("mailgate.api")


def database_unavailable(
    request: HttpRequest, exc: OperationalError | type[OperationalError]
) -> HttpResponse:
    """The database cannot be written or reached right now (disk full, locked, restarting): 503,
    nothing was stored, and the request may be repeated (with its Idempotency-Key)."""
    log.error("API request failed on the database: %s", exc)
    return api.create_response(
        request,
        {
            "detail": f"The database cannot take this request now ({exc}). Nothing was stored: "
            "repeat the request later (with the same Idempotency-Key). If it lasts, the "
            "administrator should check the database (free disk space, a running server).",
        },
        status=503,
    )


api.add_exception_handler(OperationalError, database_unavailable)
