"""The Outbox page, Retry/Cancel by role, and the `outbox` and `send` commands."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from mailgate.outbox import enqueue
from mailgate.outbox.models import OutgoingMessage, Status


@pytest.fixture
def message(make_server):
    make_server(name="main")
    return enqueue(
        from_address="app@example.com", to=["a@example.org"], subject="Quarterly report", text="x"
    )


def test_the_outbox_page_lists_and_filters_messages(admin_client, message):
    response = admin_client.get("/outbox/")
    assert response.status_code == 200
    assert b"Quarterly report" in response.content
    assert b'href="/outbox/"' in response.content  # the navigation link
    assert b"Quarterly report" not in admin_client.get("/outbox/?status=sent").content
    assert (
        b"Quarterly report"
        in admin_client.get(f"/outbox/?status=queued&server={message.server_id}").content
    )
    assert b"Quarterly report" not in admin_client.get("/outbox/?since=2999-01-01").content
    assert b"use the form YYYY-MM-DD" in admin_client.get("/outbox/?since=yesterday").content


def test_the_detail_page_shows_the_attempts(admin_client, message):
    response = admin_client.get(f"/outbox/{message.pk}/")
    assert response.status_code == 200
    assert (
        message.message_id.encode().replace(b"<", b"&lt;").replace(b">", b"&gt;")
        in response.content
    )
    assert b"No attempt yet." in response.content
    assert b">Cancel</button>" in response.content


def test_a_viewer_reads_but_cannot_retry_or_cancel(viewer_client, message):
    assert viewer_client.get(f"/outbox/{message.pk}/").status_code == 200
    assert b">Cancel</button>" not in viewer_client.get(f"/outbox/{message.pk}/").content
    assert viewer_client.post(f"/outbox/{message.pk}/cancel/").status_code == 403
    message.refresh_from_db()
    assert message.status == Status.QUEUED


def test_a_stranger_is_sent_to_sign_in(stranger_client, message):
    response = stranger_client.get("/outbox/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_an_admin_cancels_then_retries(admin_client, message):
    admin_client.post(f"/outbox/{message.pk}/cancel/")
    message.refresh_from_db()
    assert message.status == Status.CANCELLED
    admin_client.post(f"/outbox/{message.pk}/retry/")
    message.refresh_from_db()
    assert message.status == Status.QUEUED


def test_retry_and_cancel_need_csrf(admin, message):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    assert client.post(f"/outbox/{message.pk}/cancel/").status_code == 403


def test_the_outbox_command_lists_retries_and_cancels(message):
    out = StringIO()
    call_command("outbox", "list", "--json", stdout=out)
    assert json.loads(out.getvalue())[0]["id"] == message.pk
    out = StringIO()
    call_command("outbox", "list", "--status", "queued", stdout=out)
    assert "Quarterly" in out.getvalue()
    call_command("outbox", "cancel", str(message.pk), stdout=StringIO())
    assert OutgoingMessage.objects.get(pk=message.pk).status == Status.CANCELLED
    with pytest.raises(CommandError, match="cannot be cancelled"):
        call_command("outbox", "cancel", str(message.pk), stdout=StringIO())
    call_command("outbox", "retry", str(message.pk), stdout=StringIO())
    assert OutgoingMessage.objects.get(pk=message.pk).status == Status.QUEUED


def test_send_queues_a_message_with_an_attachment(make_server, tmp_path):
    make_server()
    attachment = tmp_path / "report.pdf"
    attachment.write_bytes(b"%PDF-1.4")
    out = StringIO()
    call_command(
        "send",
        "--from",
        "app@example.com",
        "--to",
        "a@example.org",
        "--subject",
        "S",
        "--body",
        "B",
        "--attach",
        str(attachment),
        stdout=out,
    )
    message = OutgoingMessage.objects.get()
    assert out.getvalue().startswith(f"queued message {message.pk}")
    assert b'filename="report.pdf"' in message.raw_bytes and b"application/pdf" in message.raw_bytes


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--from", "nope", "--to", "a@example.org"], "--from"),
        (["--from", "app@example.com", "--to", "a@@example.org"], "--to"),
        (
            [
                "--from",
                "app@example.com",
                "--to",
                "a@example.org",
                "--subject",
                "x\nBcc: y@example.org",
            ],
            "--subject",
        ),
        (["--from", "app@example.com"], "--to"),
        (
            ["--from", "app@example.com", "--to", "a@example.org", "--attach", "/nonexistent/file"],
            "--attach",
        ),
    ],
)
def test_send_refuses_bad_input_with_exit_code_2_naming_the_flag(make_server, argv, flag):
    make_server()
    with pytest.raises(CommandError) as caught:
        call_command("send", *argv, stdout=StringIO())
    assert caught.value.returncode == 2
    assert flag in str(caught.value)
    assert OutgoingMessage.objects.count() == 0


def test_send_wait_exits_3_when_nothing_delivers_it_in_time(make_server):
    make_server()
    with pytest.raises(CommandError) as caught:
        call_command(
            "send",
            "--from",
            "app@example.com",
            "--to",
            "a@example.org",
            "--wait",
            "--timeout",
            "0.3",
            stdout=StringIO(),
        )
    assert caught.value.returncode == 3
