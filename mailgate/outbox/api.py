"""REST API: /api/v1/messages."""

from ninja import Router

router = Router(tags=["messages"])
