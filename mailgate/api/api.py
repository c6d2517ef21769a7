"""The REST API (DESIGN.md §4.4), served by django-ninja with its OpenAPI document."""

from ninja import NinjaAPI

api = NinjaAPI(title="mailgate", version="1", urls_namespace="api", docs_url=None)
