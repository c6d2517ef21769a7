"""The file-backed store of the messages the sandbox SMTP server accepted."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mailgate.sandbox.mailstore import FileMailStore

pytestmark = pytest.mark.nodb

RAW = b"From: a@contoso.example\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nHallo.\r\n"


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


def add(store: FileMailStore, data: bytes = RAW, rcpt: str = "b@contoso.example") -> str:
    return store.add(
        mail_from="a@contoso.example",
        rcpt_tos=[rcpt],
        data=data,
        authenticated_as="a@contoso.example",
    )


def test_it_lists_newest_first_with_decoded_subjects(tmp_path: Path) -> None:
    store = FileMailStore(tmp_path, clock=Clock())
    first, second = add(store), add(store, rcpt="c@contoso.example")
    listed = store.list()
    assert [m["id"] for m in listed] == [second, first]
    assert listed[0]["subject"] == "Grüße"
    assert listed[0]["size"] == len(RAW)
    assert listed[0]["received_at"] > listed[1]["received_at"]
    assert store.get(first)["raw"].endswith("Hallo.\r\n")
    assert store.get_bytes(first) == RAW
    assert store.get("nope") is None and store.get_bytes("nope") is None


def test_ids_sort_by_time_and_are_unique(tmp_path: Path) -> None:
    store = FileMailStore(tmp_path, clock=Clock())
    ids = [add(store) for _ in range(20)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20


def test_a_torn_last_index_line_loses_nothing_before_it(tmp_path: Path) -> None:
    store = FileMailStore(tmp_path, clock=Clock())
    kept = add(store)
    with (tmp_path / "messages" / "index.jsonl").open("a") as fh:
        fh.write('{"id": "cut-sh')
    again = FileMailStore(tmp_path)
    assert [m["id"] for m in again.list()] == [kept]
    # Appending after the torn line still works and survives the next restart.
    newer = add(again)
    assert {m["id"] for m in FileMailStore(tmp_path).list()} == {kept, newer}


def test_clear_forgets_everything_across_restarts(tmp_path: Path) -> None:
    store = FileMailStore(tmp_path, clock=Clock())
    old = add(store)
    store.clear()
    new = add(store)
    assert [m["id"] for m in FileMailStore(tmp_path).list()] == [new]
    assert not (tmp_path / "messages" / f"{old}.eml").exists()


def test_concurrent_adds_are_all_kept(tmp_path: Path) -> None:
    store = FileMailStore(tmp_path)
    threads = [threading.Thread(target=lambda: [add(store) for _ in range(25)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(store.list()) == 100
    assert len(FileMailStore(tmp_path).list()) == 100
