"""The REST API (DESIGN.md §4.4), served by django-ninja with its OpenAPI document at /api/v1/openapi.json."""

from ninja import NinjaAPI

from mailgate.outbox.api import router as messages_router
from mailgate.servers.api import router as servers_router

api = NinjaAPI(title="mailgate", version="1", urls_namespace="api", docs_url=None)
api.add_router("/servers", servers_router)
api.add_router("/messages", messages_router)
