"""The REST API, served by django-ninja: OpenAPI at /api/v1/openapi.json, Swagger UI at /api/v1/docs."""

import logging
from functools import partial

from django.db import OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja.errors import HttpError, ValidationError
from ninja.openapi.docs import Swagger

from mailgate.api.auth import APIKeyError, BearerKey, api_key_error_response
from mailgate.api.inbox import router as inbox_router
from mailgate.api.problems import ProblemAPI, validation_problem
from mailgate.outbox.api import router as messages_router
from mailgate.servers.api import router as servers_router

DESCRIPTION = """Send mail through the mailboxes configured in mailgate (Outlook / Microsoft 365 and
Gmail with OAuth 2.0, or any SMTP server).

**Authentication.** Every call needs the header `Authorization: Bearer <API key>`, with a key
created in the console (Settings > API Keys) or with `mailgate api-keys create`. Press
**Authorize** above to try the calls from this page.

**Retries.** Send `Idempotency-Key: <unique value>` with `POST /api/v1/messages`: a retry with the
same key and the same body answers with the first message (200) instead of queueing a second one.

**Errors.** Every error is RFC 9457 problem details (`application/problem+json`): `type`,
`title`, `status`, `detail`, and `errors` mapping each failing field's path (e.g. `to[1]`,
`attachments[0].content_base64`) to what is wrong. Unknown fields are refused (422), not ignored.
"""

api = ProblemAPI(
    title="mailgate",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api",
    # Swagger UI from django-ninja's own static files ("ninja" is an installed app): no CDN.
    docs=Swagger(settings={"persistAuthorization": True}),
    docs_url="/docs",
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
api.add_exception_handler(ValidationError, partial(validation_problem, api))


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
