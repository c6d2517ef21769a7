"""REST API: /api/v1/servers (read-only)."""

from ninja import Router

router = Router(tags=["servers"])
