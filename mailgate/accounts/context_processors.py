from typing import Any

from django.conf import settings
from django.http import HttpRequest

from mailgate.accounts.roles import is_administrator


def roles(request: HttpRequest) -> dict[str, Any]:
    return {
        "is_administrator": is_administrator(request.user),
        "public_url": settings.MAILGATE_PUBLIC_URL,
    }
