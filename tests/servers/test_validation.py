"""Each rule of mailgate.servers.validation, through the form the console uses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.servers.forms import MailServerForm
from mailgate.servers.models import MailServer
from mailgate.servers.validation import validate_server
from tests.servers.conftest import CLIENT_ID, make_certificate, outlook_data, password_data


def errors_of(data: dict[str, Any], instance: MailServer | None = None) -> dict[str, list[str]]:
    form = MailServerForm(data, instance=instance)
    form.is_valid()
    return {k: [str(m) for m in v] for k, v in form.errors.items()}


def test_a_complete_outlook_server_is_valid(db: None) -> None:
    assert errors_of(outlook_data()) == {}


@pytest.mark.parametrize(
    ("method", "missing", "field"),
    [
        ("outlook", "username", "username"),
        ("outlook", "client_id", "client_id"),
        ("outlook", "client_secret", "client_secret"),
        ("gmail", "client_secret", "client_secret"),
        ("password", "username", "username"),
        ("password", "password", "password"),
    ],
)
def test_required_fields_per_method(db: None, method: str, missing: str, field: str) -> None:
    base = password_data() if method == "password" else outlook_data(auth_method=method)
    if method == "gmail":
        base["username"] = "me@gmail.com"
    base[missing] = ""
    assert field in errors_of(base)


def test_a_stored_secret_satisfies_the_requirement_on_edit(db: None) -> None:
    server = MailServer.objects.create(
        name="Sales",
        auth_method="outlook",
        username="sales@contoso.com",
        client_id=CLIENT_ID,
        client_secret="Stored~secret-value-000000000000000",
    )
    assert errors_of(outlook_data(client_secret=""), instance=server) == {}


def test_the_description_is_required_and_unique(db: None) -> None:
    assert "name" in errors_of(outlook_data(name=""))
    MailServer.objects.create(name="Sales", username="x@example.com")
    assert "already exists" in errors_of(outlook_data())["name"][0]


def test_oauth_usernames_must_be_addresses(db: None) -> None:
    assert "e-mail address" in errors_of(outlook_data(username="sales"))["username"][0]


def test_password_usernames_may_be_login_names_but_addresses_must_be_valid(db: None) -> None:
    assert errors_of(password_data(username="relayuser")) == {}
    assert "not a valid e-mail address" in errors_of(password_data(username="a@b@c"))["username"][0]


@pytest.mark.parametrize(
    "entry", ["sales@contoso.com", "contoso.com", "@contoso.com", "Sales@Contoso.COM"]
)
def test_from_filter_accepts_addresses_and_domains(db: None, entry: str) -> None:
    assert errors_of(outlook_data(from_filter=f"{entry}, other.example.org")) == {}


@pytest.mark.parametrize("entry", ["sales@", "not a domain", "localhost", "a@b@c"])
def test_from_filter_rejects_other_entries(db: None, entry: str) -> None:
    assert "from_filter" in errors_of(outlook_data(from_filter=entry))


def test_send_as_entries_must_be_addresses(db: None) -> None:
    assert errors_of(outlook_data(send_as="shared@contoso.com; info@contoso.com")) == {}
    assert "send_as" in errors_of(outlook_data(send_as="contoso.com"))


@pytest.mark.parametrize(
    ("field", "value"), [("smtp_port", "0"), ("smtp_port", "65536"), ("incoming_port", "70000")]
)
def test_ports_must_be_in_range(db: None, field: str, value: str) -> None:
    errors = errors_of(outlook_data(incoming_protocol="imap", **{field: value}))
    assert errors[field] == [
        f"{'SMTP Port' if field == 'smtp_port' else 'Incoming Port'} must be a number from 1 to 65535."
    ]


def test_a_non_numeric_port_is_refused(db: None) -> None:
    assert "smtp_port" in errors_of(outlook_data(smtp_port="abc"))


@pytest.mark.parametrize(
    "tenant",
    ["common", "organizations", "consumers", "CONTOSO.com", "9188040d-6c67-4c5b-b112-36a304b66dad"],
)
def test_valid_tenants(db: None, tenant: str) -> None:
    assert errors_of(outlook_data(tenant=tenant)) == {}


@pytest.mark.parametrize("tenant", ["my tenant", "contoso", "https://login.microsoftonline.com/x"])
def test_invalid_tenants(db: None, tenant: str) -> None:
    assert "tenant ID (GUID)" in errors_of(outlook_data(tenant=tenant))["tenant"][0]


def test_an_outlook_client_id_must_be_a_guid(db: None) -> None:
    assert "Application (client) ID" in errors_of(outlook_data(client_id="myapp"))["client_id"][0]


def test_a_secret_value_pasted_as_client_id_gets_a_hint(db: None) -> None:
    message = errors_of(outlook_data(client_id="abc8Q~Zx9yW7vU6tS5rQ4pO3nM2lK1jI0hG9fE8d"))[
        "client_id"
    ][0]
    assert "looks like a client secret Value" in message


def test_a_secret_id_pasted_as_client_secret_is_a_warning(db: None) -> None:
    form = MailServerForm(outlook_data(client_secret="9188040d-6c67-4c5b-b112-36a304b66dad"))
    assert form.is_valid()
    assert any("Secret ID" in w for w in form.warnings)


def test_the_client_secret_must_differ_from_the_client_id(db: None) -> None:
    assert "client_secret" in errors_of(outlook_data(client_secret=CLIENT_ID))


def test_gmail_client_ids_are_not_held_to_the_guid_rule(db: None) -> None:
    data = outlook_data(
        auth_method="gmail", username="me@gmail.com", client_id="123-abc.apps.googleusercontent.com"
    )
    assert errors_of(data) == {}


def test_secret_expiry_in_the_past_or_soon_warns(db: None) -> None:
    today = dt.date(2030, 6, 1)
    values = {
        **outlook_data(),
        "smtp_port": None,
        "incoming_port": None,
        "priority": 10,
        "active": True,
    }
    for key in (
        "limit_per_minute",
        "limit_recipients_per_day",
        "limit_connections",
        "max_message_bytes",
    ):
        values[key] = None
    past = validate_server(
        {**values, "client_secret_expires_on": dt.date(2030, 5, 31)}, today=today
    )
    assert past.ok and "in the past" in past.warnings[0]
    soon = validate_server(
        {**values, "client_secret_expires_on": dt.date(2030, 6, 11)}, today=today
    )
    assert soon.ok and "expires in 10 days" in soon.warnings[0]
    later = validate_server(
        {**values, "client_secret_expires_on": dt.date(2031, 1, 1)}, today=today
    )
    assert later.ok and later.warnings == []


def test_a_server_needs_smtp_or_incoming(db: None) -> None:
    data = password_data(smtp_host="")
    assert "receive-only" in errors_of(data)["smtp_host"][0]
    assert (
        errors_of(
            password_data(smtp_host="", incoming_protocol="imap", incoming_host="imap.example.com")
        )
        == {}
    )


def test_incoming_needs_a_host_for_methods_without_defaults(db: None) -> None:
    assert "incoming_host" in errors_of(password_data(incoming_protocol="pop3"))


def test_moving_needs_a_folder_and_imap(db: None) -> None:
    assert "move_to_folder" in errors_of(outlook_data(incoming_protocol="imap", after_fetch="move"))
    assert (
        errors_of(outlook_data(incoming_protocol="imap", after_fetch="move", move_to_folder="Done"))
        == {}
    )
    assert "after_fetch" in errors_of(
        outlook_data(incoming_protocol="pop3", after_fetch="move", move_to_folder="Done")
    )


def test_limits_are_whole_numbers_and_zero_means_none_except_for_connections(db: None) -> None:
    assert "limit_per_minute" in errors_of(outlook_data(limit_per_minute="-1"))
    assert "limit_recipients_per_day" in errors_of(outlook_data(limit_recipients_per_day="x"))
    assert "limit_connections" in errors_of(outlook_data(limit_connections="0"))
    assert errors_of(password_data(limit_per_minute="0", limit_recipients_per_day="0")) == {}
    # A generic server may have no connection limit: each worker then sends over
    # MAILGATE_OUTBOX_WORKER_CONNECTIONS at most.
    assert errors_of(password_data(limit_connections="0")) == {}
    assert "limit_connections" in errors_of(password_data(limit_connections="-1"))


def test_plain_smtp_to_a_remote_host_warns(db: None) -> None:
    form = MailServerForm(password_data(smtp_security="none"))
    assert form.is_valid() and "unencrypted" in form.warnings[0]
    local = MailServerForm(password_data(smtp_security="none", smtp_host="127.0.0.1"))
    assert local.is_valid() and local.warnings == []


def certificate_data(cert: str, key: str, **overrides: Any) -> dict[str, Any]:
    return password_data(
        auth_method="certificate", password="", certificate=cert, private_key=key, **overrides
    )


def test_a_matching_certificate_and_key_are_valid(
    db: None, certificate_pair: tuple[str, str]
) -> None:
    assert errors_of(certificate_data(*certificate_pair)) == {}


def test_a_certificate_needs_its_own_key(db: None, certificate_pair: tuple[str, str]) -> None:
    _, other_key = make_certificate()
    assert (
        "does not belong"
        in errors_of(certificate_data(certificate_pair[0], other_key))["private_key"][0]
    )


def test_garbage_certificate_and_key_are_refused(db: None) -> None:
    errors = errors_of(certificate_data("hello", "world"))
    assert "not a PEM certificate" in errors["certificate"][0]
    assert "not a PEM private key" in errors["private_key"][0]


def test_an_expired_certificate_is_refused(db: None) -> None:
    cert, key = make_certificate(days=-1, start_days=-30)
    assert "expired" in errors_of(certificate_data(cert, key))["certificate"][0]


def test_a_passphrase_protected_key_is_refused_with_the_fix(
    db: None, certificate_pair: tuple[str, str]
) -> None:
    cert, key_pem = certificate_pair
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    ).decode()
    assert "passphrase" in errors_of(certificate_data(cert, encrypted))["private_key"][0]


def test_a_new_certificate_is_checked_against_the_stored_key(
    db: None, certificate_pair: tuple[str, str]
) -> None:
    cert, key = certificate_pair
    form = MailServerForm(certificate_data(cert, key))
    assert form.is_valid()
    server = MailServer.objects.get(pk=form.save().pk)
    other_cert, _ = make_certificate()
    assert (
        "does not belong"
        in errors_of(certificate_data(other_cert, ""), instance=server)["private_key"][0]
    )
    assert errors_of(certificate_data(cert, ""), instance=server) == {}


def test_an_unknown_method_is_refused(db: None) -> None:
    assert "auth_method" in errors_of(outlook_data(auth_method="kerberos"))
    assert "auth_method" in validate_server({"auth_method": "kerberos"}).errors


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    username=st.text(max_size=40),
    client_id=st.text(max_size=40),
    tenant=st.text(max_size=30),
    from_filter=st.text(max_size=60),
    port=st.text(max_size=8),
    expires=st.text(max_size=12),
)
def test_any_typed_text_gets_a_verdict_never_a_crash(
    db: None, username: str, client_id: str, tenant: str, from_filter: str, port: str, expires: str
) -> None:
    data = outlook_data(
        username=username,
        client_id=client_id,
        tenant=tenant,
        from_filter=from_filter,
        smtp_port=port,
        client_secret_expires_on=expires,
    )
    form = MailServerForm(data)
    if form.is_valid():
        assert form.cleaned_data["smtp_port"] is not None
        assert 1 <= form.cleaned_data["smtp_port"] <= 65535
    else:
        assert all(messages for messages in form.errors.values())


@pytest.mark.parametrize("field", ["username", "send_as", "from_filter"])
@pytest.mark.parametrize("address", ["jörg@corp.local", "desk@mail.corp.test"])
def test_internal_domains_and_utf8_local_parts_are_addresses(
    db: None, field: str, address: str
) -> None:
    """Syntax, not public deliverability: the same addresses a message may carry (RFC 6531)."""
    assert errors_of(outlook_data(**{field: address})) == {}


@pytest.mark.parametrize("field", ["send_as", "from_filter"])
def test_reserved_domains_stay_refused(db: None, field: str) -> None:
    assert field in errors_of(outlook_data(**{field: "a@host.invalid"}))
