"""REST API: /api/v1/servers (read-only; secrets appear only as has_* booleans)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema, Status

from mailgate.servers.models import MailServer

router = Router(tags=["servers"])


class ServerOut(Schema):
    id: int
    name: str
    auth_method: str
    auth_label: str
    username: str
    client_id: str
    has_password: bool
    has_client_secret: bool
    has_private_key: bool
    client_secret_expires_on: dt.date | None
    tenant: str
    cloud: str
    redirect_url: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    from_filter: list[str]
    send_as: list[str]
    priority: int
    active: bool
    incoming_protocol: str
    incoming_host: str
    incoming_port: int | None
    incoming_security: str
    incoming_folders: list[str]
    poll_interval: int
    fetch_existing: bool
    idle: bool
    after_fetch: str
    move_to_folder: str
    limit_per_minute: int
    limit_recipients_per_day: int
    limit_connections: int
    max_message_bytes: int
    status: str
    status_label: str
    status_detail: str
    last_test_at: dt.datetime | None
    last_test_ok: bool | None
    last_test_summary: str


def server_out(server: MailServer) -> ServerOut:
    return ServerOut(
        id=server.pk,
        name=server.name,
        auth_method=server.auth_method,
        auth_label=server.auth_label,
        username=server.username,
        client_id=server.client_id,
        has_password=bool(server.password),
        has_client_secret=bool(server.client_secret),
        has_private_key=bool(server.private_key),
        client_secret_expires_on=server.client_secret_expires_on,
        tenant=server.tenant,
        cloud=server.cloud,
        redirect_url=server.redirect_url,
        smtp_host=server.smtp_host,
        smtp_port=server.smtp_port,
        smtp_security=server.smtp_security,
        from_filter=server.from_filter_entries(),
        send_as=server.send_as_entries(),
        priority=server.priority,
        active=server.active,
        incoming_protocol=server.incoming_protocol,
        incoming_host=server.incoming_host,
        incoming_port=server.incoming_port,
        incoming_security=server.incoming_security,
        incoming_folders=server.folder_list() if server.incoming_protocol == "imap" else [],
        poll_interval=server.poll_interval,
        fetch_existing=server.fetch_existing,
        idle=server.idle,
        after_fetch=server.after_fetch,
        move_to_folder=server.move_to_folder,
        limit_per_minute=server.limit_per_minute,
        limit_recipients_per_day=server.limit_recipients_per_day,
        limit_connections=server.limit_connections,
        max_message_bytes=server.max_message_bytes,
        status=server.status,
        status_label=server.get_status_display(),
        status_detail=server.status_detail,
        last_test_at=server.last_test_at,
        last_test_ok=server.last_test_ok,
        last_test_summary=server.last_test_summary,
    )


@router.get("", response=list[ServerOut], summary="List the mail servers")
def list_servers(request: HttpRequest) -> list[ServerOut]:
    return [server_out(s) for s in MailServer.objects.all()]


class NotFoundOut(Schema):
    detail: str
    errors: dict[str, str]


@router.get("/{server_id}", response={200: ServerOut, 404: NotFoundOut}, summary="One mail server")
def get_server(request: HttpRequest, server_id: int) -> Status[ServerOut | dict[str, Any]]:
    server = MailServer.objects.filter(pk=server_id).first()
    if server is None:
        problem = f"no mail server with id {server_id}"
        return Status(404, {"detail": problem, "errors": {"server_id": problem}})
    return Status(200, server_out(server))
