"""Message files that no incoming message names any more are deleted once old enough; files a
message names, and young files (a fetch writes its pack before committing the rows), stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailgate.inbox.models import IncomingMessage
from mailgate.inbox.store import sweep_files, sweep_step
from mailgate.servers.models import MailServer

DAY = 24 * 3600


def _file(home: Path, relative: str, data: bytes, age: float) -> Path:
    path = home / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def _message(server: MailServer, seq: int, raw_file: str, offset: int | None, size: int) -> None:
    IncomingMessage.objects.create(
        seq=seq, server=server, size=size, sha256="0" * 64, raw_file=raw_file, raw_offset=offset
    )


@pytest.mark.django_db
def test_only_old_files_no_message_names_are_deleted(
    settings: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings.MAILGATE_HOME = tmp_path  # type: ignore[attr-defined]
    server = MailServer.objects.create(name="Inbox", auth_method="password", smtp_host="127.0.0.1")
    kept_pack = _file(tmp_path, "inbox/packs/2026-11/kept.pack", b"a" * 20, 3 * DAY)
    kept_eml = _file(tmp_path, "inbox/ab/abcd.eml", b"b" * 10, 3 * DAY)
    _message(server, 1, "inbox/packs/2026-11/kept.pack", 0, 10)
    _message(server, 2, "inbox/packs/2026-11/kept.pack", 10, 10)
    _message(server, 3, "inbox/ab/abcd.eml", None, 10)
    old_pack = _file(tmp_path, "inbox/packs/2026-10/orphan.pack", b"c" * 10, 3 * DAY)
    old_eml = _file(tmp_path, "inbox/cd/cdef.eml", b"d" * 10, 3 * DAY)
    old_part = _file(tmp_path, "inbox/tmp/tmpx.part", b"e", 3 * DAY)
    young_pack = _file(tmp_path, "inbox/packs/2026-12/writing.pack", b"f" * 10, 60)
    other = _file(tmp_path, "inbox/README.txt", b"not ours", 3 * DAY)

    assert sweep_files() == 3
    assert not old_pack.exists() and not old_eml.exists() and not old_part.exists()
    assert kept_pack.exists() and kept_eml.exists() and young_pack.exists() and other.exists()
    assert IncomingMessage.objects.get(seq=2).raw_bytes() == b"a" * 10

    # The server is deleted: its messages go (cascade), and with them the reason to keep the files.
    server.delete()
    assert sweep_files() == 2
    assert not kept_pack.exists() and not kept_eml.exists() and young_pack.exists()


@pytest.mark.django_db
def test_the_worker_step_sweeps_once_an_hour(
    settings: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MAILGATE_HOME = tmp_path  # type: ignore[attr-defined]
    monkeypatch.setattr("mailgate.inbox.store._last_sweep", 0.0)
    first = _file(tmp_path, "inbox/ab/one.eml", b"x", 3 * DAY)
    assert sweep_step() is False and not first.exists()
    second = _file(tmp_path, "inbox/ab/two.eml", b"x", 3 * DAY)
    sweep_step()
    assert second.exists()  # within the hour: not swept again
