"""IMAP fetching against a real Dovecot (password login): exactly once, durably, each After Fetch."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from mailgate.inbox import fetcher, store
from mailgate.inbox.fetcher import fetch_server
from mailgate.inbox.models import FetchState, FolderCursor, IncomingMessage, RemoteAction
from mailgate.servers.models import MailServer
from tests.inbox.conftest import Mailbox, PasswordDovecot, make_server, message


def subjects(server: MailServer) -> list[str]:
    store.parse_pending()  # what the hand-off does before anything reads the fields
    return list(
        IncomingMessage.objects.filter(server=server)
        .order_by("seq")
        .values_list("subject", flat=True)
    )


def fetched(server: MailServer) -> dict[str, int]:
    server.refresh_from_db()
    report = fetch_server(server)
    assert report.ok, report.error
    store.parse_pending()  # the fetch stores bytes; the hand-off parses them
    return report.counts


def test_only_mail_arriving_after_set_up_is_taken_by_default(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    mailbox.append(message("old one"))
    assert fetched(imap_server) == {"INBOX": 0}
    mailbox.append(message("new one"))
    mailbox.append(message("newer one"))
    assert fetched(imap_server) == {"INBOX": 2}
    assert fetched(imap_server) == {"INBOX": 0}
    assert subjects(imap_server) == ["new one", "newer one"]
    first = IncomingMessage.objects.filter(server=imap_server).order_by("seq").first()
    assert first is not None and first.raw_bytes() == message("new one")
    assert first.sender == "billing@supplier.example"
    assert first.to == ["sales@contoso.example"]
    assert first.message_id == "<new.one@supplier.example>"


def test_fetch_existing_mail_takes_what_is_already_there(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    mailbox.append(message("old one"))
    mailbox.append(message("old two"))
    imap_server.fetch_existing = True
    imap_server.save()
    assert fetched(imap_server) == {"INBOX": 2}
    assert fetched(imap_server) == {"INBOX": 0}
    assert subjects(imap_server) == ["old one", "old two"]


def test_keep_leaves_every_flag_as_it_was(imap_server: MailServer, mailbox: Mailbox) -> None:
    imap_server.fetch_existing = True
    imap_server.save()
    mailbox.append(message("unread"))
    mailbox.append(message("read"), flags="(\\Seen)")
    mailbox.append(message("flagged"), flags="(\\Flagged $Label1)")
    before = mailbox.flags()
    assert fetched(imap_server) == {"INBOX": 3}
    assert mailbox.flags() == before
    assert not any("\\Seen" in f for uid, f in before.items() if uid == min(before))
    assert set(IncomingMessage.objects.values_list("remote_action", flat=True)) == {
        RemoteAction.NONE
    }


def test_mark_as_read_sets_seen_only_on_fetched_mail(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    mailbox.append(message("before set-up"))
    imap_server.after_fetch = "mark_read"
    imap_server.save()
    assert fetched(imap_server) == {"INBOX": 0}
    mailbox.append(message("fresh"), flags="(\\Flagged)")
    assert fetched(imap_server) == {"INBOX": 1}
    flags = mailbox.flags()
    old, new = sorted(flags)
    assert "\\Seen" not in flags[old]
    assert {"\\Seen", "\\Flagged"} <= flags[new]
    assert IncomingMessage.objects.get().remote_action == RemoteAction.DONE


def test_move_to_folder(imap_server: MailServer, mailbox: Mailbox) -> None:
    mailbox.create("Processed")
    imap_server.after_fetch = "move"
    imap_server.move_to_folder = "Processed"
    imap_server.fetch_existing = True
    imap_server.save()
    for i in range(3):
        mailbox.append(message(f"invoice {i}"))
    assert fetched(imap_server) == {"INBOX": 3}
    assert mailbox.count("INBOX") == 0
    assert mailbox.count("Processed") == 3
    assert fetched(imap_server) == {"INBOX": 0}


def test_move_to_a_folder_that_does_not_exist_creates_it(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    imap_server.after_fetch = "move"
    imap_server.move_to_folder = "Done Mail"
    imap_server.fetch_existing = True
    imap_server.save()
    for i in range(3):
        mailbox.append(message(f"order {i}"))
    assert fetched(imap_server) == {"INBOX": 3}
    assert mailbox.count("INBOX") == 0 and mailbox.count("Done Mail") == 3
    assert set(IncomingMessage.objects.values_list("remote_action", flat=True)) == {
        RemoteAction.DONE
    }


def test_a_move_folder_the_server_refuses_keeps_the_mail_and_names_the_fix(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    imap_server.after_fetch = "move"
    imap_server.move_to_folder = "~Done"  # Dovecot refuses to create a name beginning with ~
    imap_server.fetch_existing = True
    imap_server.save()
    mailbox.append(message("order 1"))
    mailbox.append(message("order 2"))
    report = fetch_server(imap_server)
    assert report.counts == {"INBOX": 2}  # stored all the same
    assert not report.ok and "'~Done'" in report.error and "does not exist" in report.error
    assert "Fix: create the folder '~Done'" in report.diagnosis
    state = FetchState.objects.get(pk=imap_server.pk)
    assert "'~Done'" in state.last_error and "Move to Folder" in state.diagnosis
    assert mailbox.count("INBOX") == 2  # left where they were
    assert set(IncomingMessage.objects.values_list("remote_action", flat=True)) == {
        RemoteAction.PENDING
    }

    # New mail goes on being fetched, and nothing is fetched twice.
    mailbox.append(message("order 3"))
    FetchState.objects.filter(pk=imap_server.pk).update(next_fetch_at=None)
    report = fetch_server(imap_server)
    assert report.counts == {"INBOX": 1} and not report.ok
    assert IncomingMessage.objects.count() == 3

    # The administrator picks a folder that can be created: the waiting messages move.
    imap_server.move_to_folder = "Done"
    imap_server.save()
    assert fetched(imap_server) == {"INBOX": 0}
    assert mailbox.count("INBOX") == 0 and mailbox.count("Done") == 3
    assert IncomingMessage.objects.count() == 3
    assert set(IncomingMessage.objects.values_list("remote_action", flat=True)) == {
        RemoteAction.DONE
    }
    assert FetchState.objects.get(pk=imap_server.pk).last_error == ""


def test_delete(imap_server: MailServer, mailbox: Mailbox) -> None:
    imap_server.after_fetch = "delete"
    imap_server.fetch_existing = True
    imap_server.save()
    mailbox.append(message("to delete"))
    mailbox.append(message("kept by someone"), flags="(\\Deleted)")
    assert fetched(imap_server) == {"INBOX": 2}
    # UID EXPUNGE removes only what mailgate stored (both here); nothing is left.
    assert mailbox.count("INBOX") == 0
    assert len(subjects(imap_server)) == 2


def test_several_folders(imap_server: MailServer, mailbox: Mailbox) -> None:
    mailbox.create("Invoices")
    mailbox.create("Support")
    imap_server.incoming_folders = "INBOX\nInvoices\nSupport"
    imap_server.save()
    assert fetched(imap_server) == {"INBOX": 0, "Invoices": 0, "Support": 0}
    mailbox.append(message("a"), folder="Invoices")
    mailbox.append(message("b"), folder="Support")
    mailbox.append(message("c"), folder="Support")
    assert fetched(imap_server) == {"INBOX": 0, "Invoices": 1, "Support": 2}
    folders = dict(IncomingMessage.objects.values_list("subject", "folder"))
    assert folders == {"a": "Invoices", "b": "Support", "c": "Support"}


def test_a_changed_uidvalidity_stores_nothing_twice(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    mailbox.create("Orders")
    imap_server.incoming_folders = "Orders"
    imap_server.fetch_existing = True
    imap_server.save()
    mailbox.append(message("one"), folder="Orders")
    mailbox.append(message("two"), folder="Orders")
    assert fetched(imap_server) == {"Orders": 2}
    old = mailbox.uidvalidity("Orders")
    # The folder is rebuilt (as after a server migration): same messages, new UIDs and UIDVALIDITY.
    mailbox.delete_folder("Orders")
    time.sleep(1.1)
    mailbox.create("Orders")
    mailbox.append(message("one"), folder="Orders")
    mailbox.append(message("two"), folder="Orders")
    no_id = message("three").replace(b"Message-ID: <three@supplier.example>\r\n", b"")
    mailbox.append(no_id, folder="Orders")
    assert mailbox.uidvalidity("Orders") != old
    assert fetched(imap_server) == {"Orders": 1}
    assert subjects(imap_server) == ["one", "two", "three"]
    cursor = FolderCursor.objects.get(server=imap_server, folder="Orders")
    assert cursor.uidvalidity == mailbox.uidvalidity("Orders") and cursor.last_uid == 3
    # The message without a Message-ID is recognised by its bytes on the next rebuild.
    mailbox.delete_folder("Orders")
    time.sleep(1.1)
    mailbox.create("Orders")
    mailbox.append(no_id, folder="Orders")
    assert fetched(imap_server) == {"Orders": 0}
    mailbox.append(message("four"), folder="Orders")
    assert fetched(imap_server) == {"Orders": 1}
    assert subjects(imap_server) == ["one", "two", "three", "four"]


def test_mail_arriving_during_a_fetch_is_taken_once(
    imap_server: MailServer, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    imap_server.fetch_existing = True
    imap_server.after_fetch = "mark_read"
    imap_server.save()
    for i in range(5):
        mailbox.append(message(f"early {i}"))
    monkeypatch.setattr(fetcher, "BATCH_MESSAGES", 2)
    real_store = fetcher.store
    arrived: list[int] = []

    def store_then_deliver(*args: Any, **kwargs: Any) -> Any:
        rows = real_store(*args, **kwargs)
        if len(arrived) < 2:
            arrived.append(1)
            mailbox.append(message(f"during {len(arrived)}"))
        return rows

    monkeypatch.setattr(fetcher, "store", store_then_deliver)
    first = fetched(imap_server)["INBOX"]
    second = fetched(imap_server)["INBOX"]
    assert first + second == 7
    assert sorted(subjects(imap_server)) == sorted(
        [f"early {i}" for i in range(5)] + ["during 1", "during 2"]
    )
    assert all("\\Seen" in f for f in mailbox.flags().values())


def test_a_large_message_is_streamed_to_a_file(
    imap_server: MailServer, mailbox: Mailbox, inbox_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher, "CHUNK_BYTES", 4 * 1024 * 1024)
    imap_server.fetch_existing = True
    imap_server.save()
    big = message("big", body="x" * 76 + "\n")
    line = b"y" * 998 + b"\r\n"
    raw = big + line * (20 * 1024 * 1024 // len(line))
    mailbox.append(raw)
    mailbox.append(message("small after"))
    assert fetched(imap_server) == {"INBOX": 2}
    row = IncomingMessage.objects.get(subject="big")
    assert row.raw is None and row.raw_file.startswith("inbox/")
    assert (inbox_home / row.raw_file).stat().st_size == len(raw) == row.size
    assert row.raw_bytes() == raw
    assert IncomingMessage.objects.get(subject="small after").raw_file == ""
    assert not list((inbox_home / store.STORE_DIR / "tmp").iterdir())


def test_malformed_mime_is_stored_raw_and_does_not_stop_the_mailbox(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    imap_server.fetch_existing = True
    imap_server.save()
    broken = (
        b"From: =?utf-8?q?broken?= <<<@@>\r\nSubject: =?x-unknown?B?!!!?=\r\n"
        b'Date: not a date\r\nContent-Type: multipart/mixed; boundary="never"\r\n\r\n'
        b"--nope\r\n\xff\xfe garbage \x80 bytes\r\n"
    )
    mailbox.append(broken)
    mailbox.append(message("fine"))
    assert fetched(imap_server) == {"INBOX": 2}
    row = IncomingMessage.objects.order_by("seq").first()
    assert row is not None and row.raw_bytes() == broken
    assert row.date is None and row.parse_error
    assert subjects(imap_server)[1] == "fine"


def test_a_wrong_password_fails_with_a_diagnosis_and_flags_the_server_when_it_repeats(
    password_dovecot: PasswordDovecot, mailbox: Mailbox, trust: None, inbox_home: Path, db: None
) -> None:
    server = make_server(password_dovecot, mailbox, password="wrong")
    for _ in range(fetcher.FLAG_AFTER_FAILURES):
        report = fetch_server(server)
        assert not report.ok and "authentication failed" in report.error
        assert "Check Username and Password" in report.diagnosis
    state = FetchState.objects.get(pk=server.pk)
    assert state.flagged and state.failures == fetcher.FLAG_AFTER_FAILURES
    assert state.next_fetch_at is not None and state.claimed_by == ""


def test_two_fetchers_never_take_one_mailbox_at_once(imap_server: MailServer) -> None:
    assert fetcher.claim(imap_server, "host:1:a", due_only=False)
    report = fetch_server(imap_server)
    assert report.skipped and not report.counts
    FetchState.objects.filter(pk=imap_server.pk).update(claimed_by="", claimed_until=None)
    assert fetch_server(imap_server).ok


def test_the_fetch_stores_the_bytes_and_the_hand_off_parses_them(
    imap_server: MailServer, mailbox: Mailbox
) -> None:
    from mailgate.inbox.handoff import hand_off, message_json

    imap_server.fetch_existing = True
    imap_server.save()
    mailbox.append(message("first"))
    mailbox.append(message("second"))
    assert fetch_server(imap_server).counts == {"INBOX": 2}
    rows = list(IncomingMessage.objects.order_by("seq"))
    assert [(r.parsed, r.subject, r.sender) for r in rows] == [(False, "", "")] * 2
    assert [r.sha256 for r in rows] == ["", ""]  # hashed with the parse, off the fetch's path
    assert rows[0].raw_bytes() == message("first")
    # A reader that comes before the hand-off parses the one message it shows.
    assert message_json(rows[0])["subject"] == "first"
    assert IncomingMessage.objects.get(pk=rows[0].pk).parsed
    assert not IncomingMessage.objects.get(pk=rows[1].pk).parsed
    hand_off()  # parses whatever is left first, so receivers see the fields
    second = IncomingMessage.objects.get(pk=rows[1].pk)
    assert second.parsed and second.subject == "second"
    assert second.sha256 == hashlib.sha256(message("second")).hexdigest()
    assert (
        IncomingMessage.objects.get(pk=rows[0].pk).sha256
        == hashlib.sha256(message("first")).hexdigest()
    )
    assert second.sender == "billing@supplier.example" and second.to == ["sales@contoso.example"]


def test_a_batch_is_written_as_one_pack_file_and_read_back_exactly(
    imap_server: MailServer, mailbox: Mailbox, inbox_home: Path, client: Any
) -> None:
    imap_server.fetch_existing = True
    imap_server.save()
    raws = [message(f"packed {i}", body=f"line {i}\n" * (i + 1)) for i in range(store.PACK_MIN)]
    for raw in raws:
        mailbox.append(raw)
    assert fetched(imap_server) == {"INBOX": store.PACK_MIN}
    rows = list(IncomingMessage.objects.order_by("seq"))
    packs = {r.raw_file for r in rows}
    assert len(packs) == 1 and next(iter(packs)).startswith("inbox/packs/")
    assert [r.raw_offset for r in rows] == [sum(len(x) for x in raws[:i]) for i in range(len(raws))]
    assert all(r.raw is None and r.raw_path() is None for r in rows)
    assert [r.raw_bytes() for r in rows] == raws
    assert (inbox_home / rows[0].raw_file).stat().st_size == sum(len(x) for x in raws)
    assert [r.subject for r in rows] == [f"packed {i}" for i in range(store.PACK_MIN)]
    assert store.contents(rows[3]).text == "line 3\r\n" * 4


def test_batches_know_the_large_messages_from_one_search(
    imap_server: MailServer, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes are fetched only for what `UID SEARCH LARGER` names; batches still respect
    BATCH_BYTES, and a message above FILE_BYTES is streamed alone."""
    monkeypatch.setattr(fetcher, "BATCH_MESSAGES", 4)
    monkeypatch.setattr(fetcher, "BATCH_BYTES", 400_000)  # a fair share of 100,000 bytes
    monkeypatch.setattr(fetcher, "FILE_BYTES", 1_000_000)
    imap_server.fetch_existing = True
    imap_server.save()
    line = "z" * 76 + "\n"
    bodies = {
        "small 1": "a\n",
        "medium 1": line * 3000,  # ~230 KB: counted at its size
        "small 2": "b\n",
        "small 3": "c\n",
        "huge": line * 15000,  # ~1.2 MB: alone, to a file
        "small 4": "d\n",
        "small 5": "e\n",
    }
    for subject, body in bodies.items():
        mailbox.append(message(subject, body=body))
    from mailgate.connections import imap_transport

    server = MailServer.objects.get(pk=imap_server.pk)
    with imap_transport(server) as transport:
        transport.open_folder("INBOX", readonly=True)
        uids = transport.uids_after(0)
        sized = fetcher._sized(transport, FolderCursor(folder="INBOX", last_uid=0), uids)
        asked: list[list[int]] = []
        real_sizes = transport.sizes
        monkeypatch.setattr(transport, "sizes", lambda u: asked.append(list(u)) or real_sizes(u))
        fetcher._sized(transport, FolderCursor(folder="INBOX", last_uid=0), uids)
        assert asked == [[uids[1], uids[4]]]  # only the two above the share
        monkeypatch.setattr(transport, "uids_larger", lambda last, size: None)
        asked.clear()
        fallback = fetcher._sized(transport, FolderCursor(folder="INBOX", last_uid=0), uids)
        assert asked == [uids]  # a server refusing LARGER: every size is asked
    by_uid = {s.uid: s.size for s in sized}
    assert by_uid[uids[0]] == 100_000 and by_uid[uids[1]] > 200_000
    assert {s.uid: s.size for s in fallback}[uids[1]] == by_uid[uids[1]]
    groups = [[s.uid for s in batch] for batch in fetcher._batches(sized)]
    assert groups == [uids[0:2], uids[2:4], uids[4:5], uids[5:7]]  # 100 + 230 + 100 KB > 400
    assert fetched(imap_server) == {"INBOX": 7}
    assert sorted(subjects(imap_server)) == sorted(bodies)
    stored = IncomingMessage.objects.get(subject="huge")
    assert stored.raw_offset is None and stored.raw_file.endswith(".eml")


def test_a_batch_larger_than_one_statement_is_stored_whole_and_in_order(
    imap_server: MailServer, mailbox: Mailbox, inbox_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's rows go in as few multi-row INSERTs as the database's parameter limit allows;
    with room for three rows per statement, ten messages take four, in arrival order."""
    columns = len([f for f in IncomingMessage._meta.concrete_fields if not f.primary_key])
    statements: list[int] = []
    real = store._max_parameters

    def three_rows(connection: Any) -> int:
        statements.append(real(connection))
        return columns * 3

    monkeypatch.setattr(store, "_max_parameters", three_rows)
    imap_server.fetch_existing = True
    imap_server.save()
    raws = [message(f"row {i}", body=f"body {i}\n") for i in range(10)]
    for raw in raws:
        mailbox.append(raw)
    assert fetched(imap_server) == {"INBOX": 10}
    assert statements and statements[0] >= 999  # the real limit was asked for
    rows = list(IncomingMessage.objects.order_by("seq"))
    assert [r.raw_bytes() for r in rows] == raws
    assert [r.uid for r in rows] == sorted(r.uid for r in rows)
    assert [r.seq for r in rows] == list(range(rows[0].seq, rows[0].seq + 10))
    assert FolderCursor.objects.get(server=imap_server, folder="INBOX").last_uid == rows[-1].uid
