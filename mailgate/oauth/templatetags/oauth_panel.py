"""`{% connection_panel server %}`: the connection panel's context, computed once per page."""

from __future__ import annotations

from typing import Any

from django import template

from mailgate import providers
from mailgate.oauth.models import Grant
from mailgate.servers.models import MailServer, ServerStatus

register = template.Library()


@register.inclusion_tag("oauth/panel.html", takes_context=True)
def connection_panel(context: template.Context, server: MailServer) -> dict[str, Any]:
    grant = Grant.objects.filter(server_id=server.pk).first() if server.pk else None
    key = server.provider_key
    last_error = last_diagnosis = ""
    if grant and grant.last_error:
        last_error, last_diagnosis = grant.last_error, grant.last_error_diagnosis
    elif server.status in (ServerStatus.RECONNECT_REQUIRED, ServerStatus.FAILING):
        last_error = server.status_detail
    return {
        "server": server,
        "grant": grant,
        "is_oauth": server.is_oauth,
        # Never while the server is failing (a held server is): the token is not the story then.
        "token_valid": bool(
            grant and grant.is_token_valid() and server.status != ServerStatus.FAILING
        ),
        "failing": server.status == ServerStatus.FAILING,
        "connect_label": providers.get(key).connect_label if key else "",
        "last_error": last_error,
        "last_diagnosis": last_diagnosis,
        "is_administrator": context.get("is_administrator", False),
        "csrf_token": context.get("csrf_token", ""),
        # Send test message: the last result (the server page passes it) and a default recipient.
        "send_test": context.get("send_test"),
        "user_email": getattr(context.get("user"), "email", ""),
    }
