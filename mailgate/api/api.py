"""The REST API, served by django-ninja with its OpenAPI document at /api/v1/openapi.json."""

from functools import partial

from ninja import NinjaAPI

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
api.add_router("/servers", servers_router)
api.add_router("/messages", messages_router)
api.add_router("/inbox", inbox_router)
