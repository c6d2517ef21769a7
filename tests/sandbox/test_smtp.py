"""The sandbox's Exchange-like SMTP submission server, driven by stdlib smtplib over real loopback sockets."""

from __future__ import annotations

import base64
import email.policy
import json
import logging
import smtplib
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailgate.sandbox.ca import SandboxCA
from mailgate.sandbox.interfaces import SubmissionLimits
from mailgate.sandbox.mailstore import FileMailStore
from mailgate.sandbox.smtp import ExchangeSMTPServer, parse_oauthbearer, parse_xoauth2
from tests.sandbox.mail_fixtures import (
    GOOGLE,
    RecordingDelivery,
    Sasl,
    SmallPolicy,
    make_policy,
    oauthbearer,
    wait_for,
    xoauth2,
)

pytestmark = pytest.mark.nodb

ALEX = "alex@contoso.example"
SAM = "sam@contoso.example"
SHARED = "info@contoso.example"
GMAIL_USER = "gina@gmail.example"
HOST = "sandbox.outlook.localhost"


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.ca = SandboxCA(tmp)
        self.policy: SmallPolicy = make_policy(tmp, ALEX, SAM, SHARED, GMAIL_USER)
        self.store = FileMailStore(tmp, clock=self.policy.now)
        self.delivery = RecordingDelivery()
        self.server = ExchangeSMTPServer(
            "127.0.0.1",
            0,
            self.ca.server_context(),
            self.policy,
            self.store,
            self.delivery,
            hostname=HOST,
        )

    def connect(self, *, tls: bool = True) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.server.port, timeout=10)
        client.ehlo("client.example")
        if tls:
            client.starttls(context=self.ca.client_context())
            client.ehlo("client.example")
        return client

    def login(self, user: str = ALEX, token: str | None = None) -> smtplib.SMTP:
        client = self.connect()
        code, _ = client.auth("XOAUTH2", Sasl(xoauth2(user, token or self.policy.mint(user))))
        assert code == 235
        return client


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    rig.server.start()
    yield rig
    rig.server.stop()


def message(sender: str = ALEX, to: str = SAM, subject: str = "Hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hi there.\n")
    return msg


def auth_error(client: smtplib.SMTP, sasl: Sasl, **kwargs: bool) -> tuple[int, str]:
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        client.auth(sasl.mechanism, sasl, **kwargs)
    return info.value.smtp_code, info.value.smtp_error.decode()


# -- session and EHLO ---------------------------------------------------------------------


def test_it_greets_like_exchange_and_offers_auth_only_after_starttls(rig: Rig) -> None:
    client = smtplib.SMTP("127.0.0.1", rig.server.port, timeout=10)
    code, banner = client.ehlo("client.example")
    assert code == 250
    lines = banner.decode().splitlines()
    assert lines[0] == f"{HOST} Hello [127.0.0.1]"
    assert "STARTTLS" in lines
    assert "SIZE 157286400" in lines
    assert not any(line.startswith("AUTH") for line in lines)
    assert client.docmd("AUTH", "XOAUTH2 dGVzdA==") == (
        504,
        f"5.7.4 Unrecognized authentication type [{HOST}]".encode(),
    )
    client.starttls(context=rig.ca.client_context())
    code, banner = client.ehlo("client.example")
    lines = banner.decode().splitlines()
    assert "AUTH LOGIN XOAUTH2 OAUTHBEARER" in lines
    assert "STARTTLS" not in lines
    client.quit()


def test_the_banner_names_the_host_as_exchange_does(rig: Rig) -> None:
    with socket.create_connection(("127.0.0.1", rig.server.port), timeout=10) as sock:
        banner = sock.makefile("rb").readline().decode()
    assert banner.startswith(f"220 {HOST} Microsoft ESMTP MAIL Service ready at ")


def test_auth_right_after_starttls_asks_for_ehlo_first(rig: Rig) -> None:
    client = smtplib.SMTP("127.0.0.1", rig.server.port, timeout=10)
    client.starttls(context=rig.ca.client_context())
    # smtplib returns a 503 instead of raising (it reads 503 as "already authenticated").
    reply = client.auth("XOAUTH2", Sasl(xoauth2(ALEX, rig.policy.mint(ALEX))))
    assert reply == (503, b"5.5.2 Send hello first")
    client.ehlo()
    assert client.auth("XOAUTH2", Sasl(xoauth2(ALEX, rig.policy.mint(ALEX))))[0] == 235
    client.quit()


def test_mail_without_auth_is_refused_with_5_7_57(rig: Rig) -> None:
    client = rig.connect()
    assert client.mail(ALEX) == (
        530,
        f"5.7.57 Client not authenticated to send mail. [{HOST}]".encode(),
    )
    client.quit()
    plain = rig.connect(tls=False)
    assert plain.mail(ALEX)[0] == 530
    plain.quit()


# -- AUTH success -------------------------------------------------------------------------


def test_xoauth2_with_the_initial_response_succeeds(rig: Rig) -> None:
    client = rig.connect()
    sasl = Sasl(xoauth2(ALEX, rig.policy.mint(ALEX)))
    assert client.auth("XOAUTH2", sasl) == (235, b"2.7.0 Authentication successful")
    assert sasl.calls == 1
    client.quit()


def test_xoauth2_in_two_steps_with_334_succeeds(rig: Rig) -> None:
    client = rig.connect()
    sasl = Sasl(xoauth2(ALEX, rig.policy.mint(ALEX)))
    assert client.auth("XOAUTH2", sasl, initial_response_ok=False) == (
        235,
        b"2.7.0 Authentication successful",
    )
    client.quit()


def test_the_mechanism_name_is_case_insensitive_as_in_microsofts_transcript(rig: Rig) -> None:
    client = rig.connect()
    assert client.docmd("auth", "xoauth2") == (334, b"")
    token = rig.policy.mint(ALEX)
    reply = client.docmd(base64.b64encode(xoauth2(ALEX, token).encode()).decode())
    assert reply == (235, b"2.7.0 Authentication successful")
    client.quit()


def test_oauthbearer_succeeds_with_and_without_host_and_port(rig: Rig) -> None:
    for resp in (
        oauthbearer(ALEX, rig.policy.mint(ALEX)),
        oauthbearer(ALEX, rig.policy.mint(ALEX), host="127.0.0.1", port=rig.server.port),
    ):
        client = rig.connect()
        assert client.auth("OAUTHBEARER", Sasl(resp, "OAUTHBEARER"))[0] == 235
        client.quit()


def test_a_long_token_fits_in_the_initial_response(rig: Rig) -> None:
    token = rig.policy.mint(
        ALEX, scp="SMTP.Send " + " ".join(f"Extra.Scope{i}" for i in range(250))
    )
    assert len(token) > 4000
    client = rig.connect()
    assert client.auth("XOAUTH2", Sasl(xoauth2(ALEX, token)))[0] == 235
    client.quit()


def test_an_app_only_token_with_smtp_sendasapp_authenticates_for_the_named_mailbox(
    rig: Rig,
) -> None:
    client = rig.connect()
    token = rig.policy.mint("", roles=["SMTP.SendAsApp"])
    assert client.auth("XOAUTH2", Sasl(xoauth2(SAM, token)))[0] == 235
    client.quit()
    other = rig.connect()
    token = rig.policy.mint("", roles=["IMAP.AccessAsApp"])
    assert auth_error(other, Sasl(xoauth2(SAM, token)))[0] == 535


# -- AUTH failures ------------------------------------------------------------------------

FAILED = (535, f"5.7.3 Authentication unsuccessful [{HOST}]")


def test_a_token_signed_by_another_key_is_refused_with_5_7_3(rig: Rig, tmp_path: Path) -> None:
    stranger = make_policy(tmp_path / "other", ALEX)
    client = rig.connect()
    sasl = Sasl(xoauth2(ALEX, stranger.mint(ALEX)))
    assert auth_error(client, sasl) == FAILED
    # Exchange answers XOAUTH2 failures directly, without an error challenge (Microsoft's
    # IMAP/POP/SMTP OAuth guide shows the exchange).
    assert sasl.challenges == []


def test_an_expired_token_is_refused_with_5_7_3(rig: Rig) -> None:
    token = rig.policy.mint(ALEX, lifetime=60)
    rig.policy.advance(61)
    assert auth_error(rig.connect(), Sasl(xoauth2(ALEX, token))) == FAILED


def test_a_token_for_another_audience_is_refused_with_5_7_3(rig: Rig) -> None:
    token = rig.policy.mint(ALEX, aud="https://graph.microsoft.com")
    assert auth_error(rig.connect(), Sasl(xoauth2(ALEX, token))) == FAILED


def test_a_token_without_smtp_send_is_refused_with_5_7_3(rig: Rig) -> None:
    token = rig.policy.mint(ALEX, scp="IMAP.AccessAsUser.All POP.AccessAsUser.All")
    assert auth_error(rig.connect(), Sasl(xoauth2(ALEX, token))) == FAILED


def test_a_full_scope_url_in_scp_counts_as_smtp_send(rig: Rig) -> None:
    token = rig.policy.mint(ALEX, scp="https://outlook.office.com/SMTP.Send")
    client = rig.connect()
    assert client.auth("XOAUTH2", Sasl(xoauth2(ALEX, token)))[0] == 235
    client.quit()


def test_user_other_than_the_tokens_user_is_refused_with_5_7_3(rig: Rig) -> None:
    assert auth_error(rig.connect(), Sasl(xoauth2(SAM, rig.policy.mint(ALEX)))) == FAILED


def test_a_shared_mailbox_the_user_may_act_for_authenticates(rig: Rig) -> None:
    rig.policy.send_as.add((ALEX, SHARED))
    client = rig.connect()
    assert client.auth("XOAUTH2", Sasl(xoauth2(SHARED, rig.policy.mint(ALEX))))[0] == 235
    client.send_message(message(sender=SHARED))
    client.quit()
    assert rig.store.list()[0]["authenticated_as"] == SHARED


def test_an_unknown_mailbox_is_refused_with_5_7_3(rig: Rig) -> None:
    ghost = "ghost@contoso.example"
    assert auth_error(rig.connect(), Sasl(xoauth2(ghost, rig.policy.mint(ghost)))) == FAILED


def test_garbage_instead_of_base64_is_refused_with_5_7_3(rig: Rig) -> None:
    client = rig.connect()
    assert client.docmd("AUTH", "XOAUTH2 !!!not-base64!!!") == (535, FAILED[1].encode())
    assert client.docmd("AUTH", "XOAUTH2 " + base64.b64encode(b"user=x").decode()) == (
        535,
        FAILED[1].encode(),
    )


def test_oauthbearer_failure_sends_the_rfc_7628_error_challenge_then_5_7_3(rig: Rig) -> None:
    token = rig.policy.mint(ALEX, scp="IMAP.AccessAsUser.All")
    sasl = Sasl(oauthbearer(ALEX, token), "OAUTHBEARER")
    assert auth_error(rig.connect(), sasl) == FAILED
    assert len(sasl.challenges) == 1
    assert json.loads(sasl.challenges[0])["status"] == "invalid_token"


def test_smtp_auth_disabled_for_the_tenant_gives_5_7_139(rig: Rig) -> None:
    rig.policy.disabled[ALEX] = "Tenant"
    code, text = auth_error(rig.connect(), Sasl(xoauth2(ALEX, rig.policy.mint(ALEX))))
    assert code == 535
    assert text == (
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
        f"Visit https://aka.ms/smtp_auth_disabled for more information. [{HOST}]"
    )


def test_smtp_auth_disabled_for_the_mailbox_gives_5_7_139(rig: Rig) -> None:
    rig.policy.disabled[ALEX] = "Mailbox"
    code, text = auth_error(rig.connect(), Sasl(xoauth2(ALEX, rig.policy.mint(ALEX))))
    assert code == 535
    assert (
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."
        in text
    )


def test_auth_login_with_a_password_is_refused_as_basic_auth(rig: Rig) -> None:
    client = rig.connect()
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        client.login(ALEX, "a password")
    assert info.value.smtp_code == 535
    assert info.value.smtp_error.decode() == (
        f"5.7.139 Authentication unsuccessful, basic authentication is disabled. [{HOST}]"
    )


def test_no_token_reaches_the_logs(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [rig.policy.mint(ALEX) for _ in range(3)]
    for token, command in zip(
        tokens, ("AUTH XOAUTH2", "auth xoauth2", "AUTH XOAUTH2"), strict=True
    ):
        client = rig.connect()
        response = base64.b64encode(xoauth2(ALEX, token).encode()).decode()
        if token is tokens[2]:
            assert client.docmd(command)[0] == 334
            assert client.docmd(response)[0] == 235
        else:
            assert client.docmd(command, response)[0] == 235
        client.quit()
    bad = rig.connect()
    auth_error(bad, Sasl(xoauth2(ALEX, tokens[0] + "x")))
    wait_for(lambda: "connection lost" in caplog.text)
    for token in tokens:
        assert token not in caplog.text
        assert base64.b64encode(xoauth2(ALEX, token).encode()).decode() not in caplog.text
    assert "AUTH XOAUTH2 as alex@contoso.example" in caplog.text


def test_after_a_failed_auth_the_session_may_try_again(rig: Rig) -> None:
    client = rig.connect()
    auth_error(client, Sasl(xoauth2(ALEX, "not-a-token")))
    assert client.auth("XOAUTH2", Sasl(xoauth2(ALEX, rig.policy.mint(ALEX))))[0] == 235
    client.quit()


# -- Google tokens ------------------------------------------------------------------------


def test_a_google_token_authenticates_for_its_own_address_like_gmail(rig: Rig) -> None:
    client = rig.connect()
    assert client.auth(
        "XOAUTH2", Sasl(xoauth2(GMAIL_USER, rig.policy.mint_google(GMAIL_USER)))
    ) == (
        235,
        b"2.7.0 Accepted",
    )
    reply = client.send_message(message(sender=GMAIL_USER, to=ALEX))
    assert reply == {}
    client.quit()
    assert [m["authenticated_as"] for m in rig.store.list()] == [GMAIL_USER]


def test_a_bad_google_token_gets_gmails_challenge_then_5_7_8(rig: Rig) -> None:
    token = rig.policy.mint_google(GMAIL_USER, lifetime=10)
    rig.policy.advance(11)
    sasl = Sasl(xoauth2(GMAIL_USER, token))
    code, text = auth_error(rig.connect(), sasl)
    assert code == 535
    assert text.startswith(
        "5.7.8 Username and Password not accepted. For more information, go to\n"
    )
    assert "5.7.8  https://support.google.com/mail/?p=BadCredentials " in text
    assert text.endswith(" - gsmtp")
    assert json.loads(sasl.challenges[0]) == {"status": "400", "schemes": "Bearer", "scope": GOOGLE}


def test_a_google_token_for_another_address_is_refused_like_gmail(rig: Rig) -> None:
    sasl = Sasl(xoauth2(ALEX, rig.policy.mint_google(GMAIL_USER)))
    assert auth_error(rig.connect(), sasl)[0] == 535
    assert len(sasl.challenges) == 1


def test_gmail_rewrites_a_from_the_account_may_not_use(rig: Rig) -> None:
    client = rig.login(GMAIL_USER, rig.policy.mint_google(GMAIL_USER))
    client.send_message(message(sender="boss@elsewhere.example", to=ALEX))
    client.quit()
    stored = rig.store.list()[0]
    assert stored["mail_from"] == GMAIL_USER
    assert f"From: {GMAIL_USER}" in rig.store.get(stored["id"])["raw"]


# -- submission ---------------------------------------------------------------------------


def test_accepted_mail_is_stored_and_delivered_to_sandbox_mailboxes(rig: Rig) -> None:
    client = rig.login()
    msg = message(to=f"{SAM}, outsider@fabrikam.example", subject="Quarterly numbers")
    client.mail(ALEX)
    client.rcpt(SAM)
    client.rcpt("outsider@fabrikam.example")
    code, text = client.data(msg.as_bytes(policy=email.policy.SMTP))
    client.quit()
    assert code == 250
    [stored] = rig.store.list()
    assert text.decode() == f"2.0.0 OK <{stored['id']}> [Hostname={HOST}]"
    assert stored["subject"] == "Quarterly numbers"
    assert stored["rcpt_tos"] == [SAM, "outsider@fabrikam.example"]
    assert stored["authenticated_as"] == ALEX
    assert [a for a, _ in rig.delivery.delivered] == [SAM]
    delivered = rig.delivery.to(SAM)[0]
    assert delivered.startswith(f"Return-Path: <{ALEX}>\r\nReceived: from client.example".encode())
    assert delivered.endswith(msg.as_bytes(policy=email.policy.SMTP))


def test_mail_and_rcpt_replies_use_exchanges_texts(rig: Rig) -> None:
    client = rig.login()
    assert client.mail(ALEX) == (250, b"2.1.0 Sender OK")
    assert client.rcpt(SAM) == (250, b"2.1.5 Recipient OK")
    client.quit()


def test_from_another_mailbox_is_refused_with_send_as_denied(rig: Rig) -> None:
    client = rig.login()
    with pytest.raises(smtplib.SMTPDataError) as info:
        client.send_message(message(sender=SAM))
    assert info.value.smtp_code == 554
    assert info.value.smtp_error.decode().startswith(
        f"5.2.252 SendAsDenied; {ALEX} not allowed to send as {SAM}; "
        "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied;"
    )
    client.quit()
    assert rig.store.list() == []


def test_a_from_header_of_another_mailbox_is_refused_even_with_a_matching_envelope(
    rig: Rig,
) -> None:
    client = rig.login()
    with pytest.raises(smtplib.SMTPDataError) as info:
        client.send_message(message(sender=SAM), from_addr=ALEX)
    assert info.value.smtp_code == 554
    client.quit()


def test_from_another_mailbox_is_accepted_with_a_send_as_grant(rig: Rig) -> None:
    rig.policy.send_as.add((ALEX, SAM))
    client = rig.login()
    assert client.send_message(message(sender=SAM, to=ALEX)) == {}
    client.quit()
    assert rig.store.list()[0]["mail_from"] == SAM


def test_a_fourth_concurrent_connection_is_refused_with_4_3_2(rig: Rig) -> None:
    clients = [rig.login() for _ in range(3)]
    fourth = rig.connect()
    code, text = auth_error(fourth, Sasl(xoauth2(ALEX, rig.policy.mint(ALEX))))
    assert code == 432
    assert text == (
        "4.3.2 Concurrent connections limit exceeded. "
        f"Visit https://aka.ms/concurrent_sending for more information. [Hostname={HOST}]"
    )
    # Another mailbox is not affected, and a closed connection frees a slot.
    rig.login(SAM).quit()
    clients.pop().quit()
    wait_for(lambda: rig.server.connection_count(ALEX) == 2)
    assert fourth.auth("XOAUTH2", Sasl(xoauth2(ALEX, rig.policy.mint(ALEX))))[0] == 235
    for client in [*clients, fourth]:
        client.quit()


def test_over_30_messages_a_minute_are_delayed_not_refused(rig: Rig) -> None:
    client = rig.login()
    for i in range(32):
        assert client.send_message(message(subject=f"n{i}")) == {}
    client.quit()
    assert len(rig.store.list()) == 32
    assert len(rig.delivery.to(SAM)) == 30
    pending = rig.server.pending_deliveries()
    assert [rcpt for _, rcpt in pending] == [SAM, SAM]
    assert all(release > rig.policy.now() + 50 for release, _ in pending)
    rig.policy.advance(61)
    wait_for(lambda: len(rig.delivery.to(SAM)) == 32)
    assert rig.server.pending_deliveries() == []


def test_mail_held_back_by_the_rate_is_delivered_at_stop(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.policy.limits[ALEX] = SubmissionLimits(per_minute=1)
    rig.server.start()
    client = rig.login()
    client.send_message(message(subject="first"))
    client.send_message(message(subject="second"))
    client.quit()
    assert len(rig.server.pending_deliveries()) == 1
    rig.server.stop()
    assert [b"second" in raw for raw in rig.delivery.to(SAM)] == [False, True]


def test_the_rate_limit_comes_from_the_policy(rig: Rig) -> None:
    rig.policy.limits[ALEX] = SubmissionLimits(per_minute=2)
    client = rig.login()
    for _ in range(3):
        client.send_message(message())
    client.quit()
    assert len(rig.delivery.to(SAM)) == 2
    assert len(rig.server.pending_deliveries()) == 1


def test_the_daily_recipient_quota_refuses_beyond_10000_in_24_hours(rig: Rig) -> None:
    client = rig.login()
    client.mail(ALEX)
    # PIPELINING (advertised, as Exchange does): all 10,000 RCPT commands in one write.
    client.send("".join(f"RCPT TO:<r{i}@fabrikam.example>\r\n" for i in range(10_000)))
    assert {client.getreply()[0] for _ in range(10_000)} == {250}
    assert client.data(message(to="undisclosed-recipients:;").as_bytes())[0] == 250
    with pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail(ALEX, [SAM], message().as_bytes())
    assert info.value.smtp_code == 554
    assert info.value.smtp_error.decode() == (
        "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; "
        "Failed to process message due to a permanent exception with message Cannot submit message. "
        f"[Hostname={HOST}]"
    )
    rig.policy.advance(23 * 3600)
    with pytest.raises(smtplib.SMTPDataError):
        client.sendmail(ALEX, [SAM], message().as_bytes())
    rig.policy.advance(3600 + 1)
    assert client.sendmail(ALEX, [SAM], message().as_bytes()) == {}
    client.quit()


def test_the_store_survives_a_restart(rig: Rig, tmp_path: Path) -> None:
    client = rig.login()
    client.send_message(message(subject="Kept"))
    client.quit()
    again = FileMailStore(tmp_path)
    [kept] = again.list()
    assert kept["subject"] == "Kept"
    assert "Hi there." in again.get(kept["id"])["raw"]
    again.clear()
    assert FileMailStore(tmp_path).list() == []


def test_stop_closes_open_connections(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.server.start()
    client = rig.login()
    rig.server.stop()
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        client.noop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", rig.server.port), timeout=2).close()


def test_a_stopped_server_starts_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.server.stop()
    for _ in range(2):
        rig.server.start()
        rig.login().quit()
        rig.server.stop()


# -- SASL parsing -------------------------------------------------------------------------


def test_microsofts_documented_xoauth2_example_parses() -> None:
    blob = base64.b64decode(
        "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVy"
        "IEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ=="
    )
    creds = parse_xoauth2(blob)
    assert creds.user == "test@contoso.onmicrosoft.com"
    assert creds.token == "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA"


def test_the_rfc_7628_oauthbearer_example_parses() -> None:
    blob = base64.b64decode(
        "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
    )
    creds = parse_oauthbearer(blob)
    assert creds.user == "user@example.com"
    assert creds.token == "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="


# -- CHUNKING (BDAT, RFC 3030) --------------------------------------------------------------


def bdat(client: smtplib.SMTP, chunk: bytes, *, last: bool = False) -> tuple[int, bytes]:
    client.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return client.getreply()


def test_ehlo_offers_chunking_after_starttls(rig: Rig) -> None:
    client = rig.connect()
    assert client.has_extn("chunking") and client.has_extn("pipelining")
    client.quit()


def test_bdat_chunks_make_one_message_byte_for_byte(rig: Rig) -> None:
    raw = message().as_bytes(policy=email.policy.SMTP)
    raw = raw.replace(b"Hi there.", b".a line with a leading dot\r\n..and two")
    client = rig.login()
    assert client.mail(ALEX)[0] == 250
    assert client.rcpt(SAM)[0] == 250
    half = len(raw) // 2
    assert bdat(client, raw[:half]) == (250, f"2.0.0 {half} octets received".encode())
    assert bdat(client, raw[half:])[0] == 250
    code, text = bdat(client, b"", last=True)
    assert code == 250 and text.decode().startswith("2.0.0 OK <")
    (delivered,) = rig.delivery.to(SAM)
    assert delivered.endswith(raw)  # no dot-stuffing to undo: the bytes are as sent
    # The session goes on: the next transaction is independent.
    assert client.sendmail(ALEX, [SAM], message(subject="next").as_bytes()) == {}
    client.quit()


def test_a_chunk_outside_a_transaction_is_read_and_refused_never_run_as_commands(
    rig: Rig,
) -> None:
    client = rig.login()
    smuggled = b"MAIL FROM:<alex@contoso.example>\r\nRCPT TO:<sam@contoso.example>\r\nDATA\r\n"
    assert bdat(client, smuggled, last=True) == (503, b"5.5.1 Bad sequence of commands")
    assert client.noop()[0] == 250  # the next line read is a command again
    client.quit()
    assert rig.delivery.to(SAM) == []


def test_bdat_before_authentication_is_refused_after_reading_the_chunk(rig: Rig) -> None:
    client = rig.connect()
    code, text = bdat(client, b"QUIT\r\n", last=True)
    assert code == 530 and text.decode().startswith("5.7.57")
    assert client.noop()[0] == 250
    client.quit()


def test_bdat_without_a_size_ends_the_session(rig: Rig) -> None:
    client = rig.login()
    client.mail(ALEX)
    client.rcpt(SAM)
    assert client.docmd("BDAT", "LAST") == (501, b"5.5.4 Invalid arguments")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()


def test_send_as_is_checked_at_bdat_last_like_at_data(rig: Rig) -> None:
    client = rig.login()
    client.mail(SAM)
    client.rcpt(ALEX)
    code, text = bdat(client, message(sender=SAM, to=ALEX).as_bytes(), last=True)
    assert code == 554 and "SendAsDenied" in text.decode()
    client.quit()


def test_a_refused_last_chunk_ends_the_transaction(rig: Rig) -> None:
    client = rig.login()
    assert client.mail(ALEX)[0] == 250
    assert bdat(client, b"no recipients yet\r\n", last=True)[0] == 503
    assert client.mail(ALEX)[0] == 250  # a new transaction, not a "nested MAIL"
    assert client.rcpt(SAM)[0] == 250
    assert bdat(client, message().as_bytes(), last=True)[0] == 250
    client.quit()
    assert len(rig.delivery.to(SAM)) == 1
