"""The Mail Servers console with the personas: pages, POSTs, CSRF, write-only secrets."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.test import Client
from django.urls import reverse

from mailgate.servers.models import MailServer
from tests.servers.conftest import CLIENT_SECRET, outlook_data, password_data

LIST = "/settings/technical/mail-servers/"
ADD = "/settings/technical/mail-servers/add/"


@pytest.fixture
def server(db: None) -> MailServer:
    created = MailServer.objects.create(
        name="Sales",
        auth_method="outlook",
        username="sales@contoso.com",
        client_id="11111111-2222-3333-4444-555555555555",
        client_secret=CLIENT_SECRET,
        smtp_host="smtp.office365.com",
    )
    return MailServer.objects.get(pk=created.pk)


def edit_url(server: MailServer) -> str:
    return reverse("servers:edit", args=[server.pk])


def label_for(html: str, text: str) -> str:
    """The id a <label> with exactly this text points at (fails when absent or repeated)."""
    found = re.findall(rf'<label for="([^"]+)">{re.escape(text)}</label>', html)
    assert len(found) == 1, f"label {text!r}: {found}"
    return found[0]


CONTRACT_LABELS = [
    "Mail Server Description",
    "Authenticate Using",
    "Username",
    "Password",
    "OAuth2 Redirect URL",
    "Client ID",
    "Client Secret",
    "Client Secret Expires On",
    "Tenant",
    "SMTP Server",
    "SMTP Port",
    "Connection Security",
    "From Filter",
    "Priority",
    "Active",
    "Incoming Mail",
    "Incoming Server",
    "Incoming Port",
    "Incoming Security",
    "Folders",
    "Poll Interval",
    "Fetch Existing Mail",
    "After Fetch",
    "Move To Folder",
]


def test_the_form_has_every_contract_label_once_pointing_at_an_input(admin_client: Client) -> None:
    html = admin_client.get(ADD).content.decode()
    labels = re.findall(r"<label[^>]*>(.*?)</label>", html, re.S)
    for text in CONTRACT_LABELS:
        target = label_for(html, text)
        assert f'id="{target}"' in html
        # No other label may contain a contract label (Playwright's get_by_label matches substrings),
        # except the contract's own pairs (Client Secret / ... Expires On, Folder / Move To Folder).
        containing = [lab for lab in labels if text.lower() in lab.lower()]
        allowed = {text, *(c for c in CONTRACT_LABELS if text.lower() in c.lower())}
        assert set(containing) <= allowed, (text, containing)
    for option in (
        "Username and Password",
        "Outlook OAuth Authentication",
        "Gmail OAuth Authentication",
        "TLS Certificate",
    ):
        assert f">{option}</option>" in html
    assert re.search(
        r'<select name="incoming_protocol"[^>]*>\s*<option value="none" selected>None</option>',
        html,
    )
    assert ">IMAP</option>" in html and ">POP3</option>" in html
    assert re.search(r'<input type="text" id="id_redirect_url" value="[^"]*" readonly', html)
    assert '<button type="button" class="btn" id="copy-redirect-url">Copy</button>' in html
    assert ">Create</button>" in html and ">Save</button>" not in html
    assert "<legend>Advanced</legend>" in html


def test_the_list_shows_the_servers_columns_and_add_for_admins(
    admin_client: Client, server: MailServer
) -> None:
    MailServer.objects.create(name="Old relay", username="old@example.com", active=False)
    html = admin_client.get(LIST).content.decode()
    assert "<h1>Mail Servers</h1>" in html
    assert f'href="{ADD}">Add</a>' in html
    for text in ("Sales", "sales@contoso.com", "Outlook OAuth Authentication", "Not connected"):
        assert text in html
    assert "Old relay" in html and "<td>No</td>" in html and "<td>Yes</td>" in html


def test_creating_an_outlook_server_fills_the_provider_defaults(admin_client: Client) -> None:
    response = admin_client.post(ADD, outlook_data(incoming_protocol="imap"))
    server = MailServer.objects.get(name="Sales")
    assert response.status_code == 302 and response["Location"] == edit_url(server)
    assert (server.smtp_host, server.smtp_port, server.smtp_security) == (
        "smtp.office365.com",
        587,
        "starttls",
    )
    assert (server.incoming_host, server.incoming_port, server.incoming_security) == (
        "outlook.office365.com",
        993,
        "ssl",
    )
    assert server.limit_per_minute == 30 and server.max_message_bytes == 35 * 1024 * 1024
    assert server.client_secret is not None and server.client_secret.reveal() == CLIENT_SECRET
    page = admin_client.get(response["Location"]).content.decode()
    assert "Mail server “Sales” created." in page
    assert 'id="connection"' in page  # the oauth package's connection panel


def test_creating_a_gmail_server_uses_googles_hosts(admin_client: Client) -> None:
    data = outlook_data(
        auth_method="gmail",
        username="me@gmail.com",
        client_id="123-abc.apps.googleusercontent.com",
        incoming_protocol="pop3",
    )
    assert admin_client.post(ADD, data).status_code == 302
    server = MailServer.objects.get()
    assert (server.smtp_host, server.incoming_host, server.incoming_port) == (
        "smtp.gmail.com",
        "pop.gmail.com",
        995,
    )


def test_typed_hosts_win_over_the_defaults(admin_client: Client) -> None:
    data = outlook_data(smtp_host="smtp.partner.example", smtp_port="2525")
    assert admin_client.post(ADD, data).status_code == 302
    server = MailServer.objects.get()
    assert (server.smtp_host, server.smtp_port) == ("smtp.partner.example", 2525)


def test_the_us_government_cloud_changes_the_default_hosts(admin_client: Client) -> None:
    assert admin_client.post(ADD, outlook_data(cloud="usgov")).status_code == 302
    assert MailServer.objects.get().smtp_host == "smtp.office365.us"


def test_the_secret_is_never_rendered_and_a_note_says_it_is_stored(
    admin_client: Client, viewer_client: Client, server: MailServer
) -> None:
    for client in (admin_client, viewer_client):
        html = client.get(edit_url(server)).content.decode()
        assert CLIENT_SECRET not in html
        assert CLIENT_SECRET[:6] not in html
        assert server.client_secret.ciphertext not in html  # type: ignore[union-attr]
        assert (
            "A client secret is stored. Leave empty to keep it, or type a new one to replace it."
            in html
        )
        assert re.search(r'<input type="password" name="client_secret"[^>]*>', html)
        assert 'name="client_secret" value' not in html


def test_saving_with_an_empty_secret_keeps_the_stored_one(
    admin_client: Client, server: MailServer
) -> None:
    data = outlook_data(client_secret="", priority="5")
    response = admin_client.post(edit_url(server), data)
    assert response.status_code == 302
    server.refresh_from_db()
    assert server.priority == 5
    assert server.client_secret.reveal() == CLIENT_SECRET  # type: ignore[union-attr]
    assert "Mail server “Sales” saved." in admin_client.get(edit_url(server)).content.decode()


def test_typing_a_new_secret_replaces_it(admin_client: Client, server: MailServer) -> None:
    admin_client.post(
        edit_url(server), outlook_data(client_secret="New~secret-value-0123456789abcdef")
    )
    server.refresh_from_db()
    assert server.client_secret.reveal() == "New~secret-value-0123456789abcdef"  # type: ignore[union-attr]


def test_switching_to_password_drops_the_client_secret(
    admin_client: Client, server: MailServer
) -> None:
    response = admin_client.post(edit_url(server), password_data(name="Sales"))
    assert response.status_code == 302
    server.refresh_from_db()
    assert server.client_secret is None
    assert server.password.reveal() == "relay-Passw0rd-plaintext"  # type: ignore[union-attr]


def test_an_invalid_form_keeps_what_was_typed_but_not_the_secret(admin_client: Client) -> None:
    data = outlook_data(
        client_id="not-a-guid",
        smtp_host="smtp.typed.example",
        from_filter="sales@contoso.com, bad@@x",
    )
    response = admin_client.post(ADD, data)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'value="smtp.typed.example"' in html
    assert 'value="Sales"' in html
    assert 'value="sales@contoso.com, bad@@x"' in html
    assert CLIENT_SECRET not in html
    assert "type Client Secret again" in html
    assert "The Client ID is the Application (client) ID" in html
    assert "'bad@@x' is neither an e-mail address nor a domain" in unescape(html)
    assert not MailServer.objects.exists()


def test_a_past_secret_expiry_is_a_warning_not_a_refusal(admin_client: Client) -> None:
    response = admin_client.post(
        ADD, outlook_data(client_secret_expires_on="2001-01-31"), follow=True
    )
    assert MailServer.objects.filter(name="Sales").exists()
    assert "is in the past" in response.content.decode()


def test_the_redirect_url_comes_from_the_public_url(
    admin_client: Client, server: MailServer
) -> None:
    html = admin_client.get(edit_url(server)).content.decode()
    assert 'value="http://127.0.0.1:8000/oauth/microsoft/callback"' in html
    assert "http://127.0.0.1:8000/oauth/google/callback" in html  # for the script, per method
    assert 'id="public-url-warning"' not in html


def test_a_plain_http_public_url_outside_loopback_shows_a_warning(
    admin_client: Client, settings: pytest.FixtureRequest
) -> None:
    settings.MAILGATE_PUBLIC_URL = "http://mail.example.com"  # type: ignore[attr-defined]
    html = admin_client.get(ADD).content.decode()
    assert 'id="public-url-warning"' in html
    assert "Serve mailgate over https" in html


def test_https_public_url_has_no_warning(
    admin_client: Client, settings: pytest.FixtureRequest
) -> None:
    settings.MAILGATE_PUBLIC_URL = "https://mail.example.com"  # type: ignore[attr-defined]
    html = admin_client.get(ADD).content.decode()
    assert 'id="public-url-warning"' not in html
    assert "https://mail.example.com/oauth/microsoft/callback" in html


def test_viewers_read_the_list_and_form_but_cannot_change(
    viewer_client: Client, server: MailServer
) -> None:
    listing = viewer_client.get(LIST)
    assert listing.status_code == 200
    assert f'href="{ADD}"' not in listing.content.decode()
    form = viewer_client.get(edit_url(server)).content.decode()
    assert ">Save</button>" not in form and "Delete this mail server" not in form
    assert re.search(r'<input type="text" name="name" value="Sales"[^>]*disabled', form)
    assert viewer_client.get(ADD).status_code == 403
    assert viewer_client.post(ADD, outlook_data(name="X")).status_code == 403
    assert viewer_client.post(edit_url(server), outlook_data(name="Hacked")).status_code == 403
    delete = reverse("servers:delete", args=[server.pk])
    assert viewer_client.get(delete).status_code == 403
    assert viewer_client.post(delete).status_code == 403
    server.refresh_from_db()
    assert server.name == "Sales"
    assert MailServer.objects.count() == 1


def test_strangers_are_sent_to_sign_in_for_every_page_and_post(
    stranger_client: Client, server: MailServer
) -> None:
    delete = reverse("servers:delete", args=[server.pk])
    for path in (LIST, ADD, edit_url(server), delete):
        for method in ("get", "post"):
            response = getattr(stranger_client, method)(path)
            assert response.status_code == 302, (method, path)
            assert response["Location"].startswith(reverse("login"))
    assert MailServer.objects.get().name == "Sales"


def test_delete_asks_for_confirmation_then_deletes(
    admin_client: Client, server: MailServer
) -> None:
    delete = reverse("servers:delete", args=[server.pk])
    page = admin_client.get(delete)
    assert page.status_code == 200 and "Delete “Sales”?" in page.content.decode()
    assert MailServer.objects.exists()
    response = admin_client.post(delete)
    assert response.status_code == 302 and response["Location"] == LIST
    assert not MailServer.objects.exists()


def test_every_form_enforces_csrf(admin: object, server: MailServer) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)  # type: ignore[arg-type]
    assert client.post(ADD, outlook_data(name="Other")).status_code == 403
    assert client.post(edit_url(server), outlook_data()).status_code == 403
    assert client.post(reverse("servers:delete", args=[server.pk])).status_code == 403
    page = client.get(ADD).content.decode()
    assert 'name="csrfmiddlewaretoken"' in page
    assert MailServer.objects.count() == 1


def test_a_missing_server_is_404(admin_client: Client) -> None:
    assert admin_client.get(reverse("servers:edit", args=[9999])).status_code == 404


def test_the_navigation_reaches_mail_servers_through_settings_and_technical(
    admin_client: Client,
) -> None:
    home = admin_client.get("/").content.decode()
    assert home.count('href="/settings/"') == 1
    settings_page = admin_client.get("/settings/").content.decode()
    assert '<a href="/settings/technical/">Technical</a>' in settings_page
    assert "<h3>Mail Server</h3>" in settings_page
    assert settings_page.count(f'href="{LIST}"') == 1
    technical = admin_client.get("/settings/technical/").content.decode()
    assert technical.count(f'href="{LIST}"') == 1


def test_the_add_form_can_start_with_a_method_and_ignores_an_unknown_one(
    admin_client: Client,
) -> None:
    outlook = admin_client.get(ADD + "?auth=outlook").content.decode()
    assert '<option value="outlook" selected>' in outlook
    unknown = admin_client.get(ADD + "?auth=kerberos")
    assert unknown.status_code == 200
    assert '<option value="password" selected>' in unknown.content.decode()


def test_an_invalid_edit_keeps_the_stored_server_unchanged(
    admin_client: Client, server: MailServer
) -> None:
    response = admin_client.post(edit_url(server), outlook_data(name="", smtp_port="0"))
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    server.refresh_from_db()
    assert server.name == "Sales" and server.smtp_port == 587
