"""Long commands show a progress bar on a terminal, and only their plain lines when piped or with
--json (no control characters): `servers import` through a real pseudo-terminal, `outbox retry`
and the helper itself through a stream that says it is a terminal (the seam rich draws on)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import OutputWrapper

from mailgate.outbox.models import OutgoingMessage, Status
from mailgate.progress import CommandProgress, is_terminal
from mailgate.servers.models import MailServer
from tests.outbox.own_database import ROOT
from tests.processes import MAILGATE, home_env, mailgate

ESC = "\x1b"


class TerminalBuffer(io.StringIO):
    """What a terminal would receive: rich takes a stream whose isatty() is true as one."""

    def isatty(self) -> bool:
        return True


def test_the_helper_draws_on_a_terminal_and_writes_plain_lines_elsewhere() -> None:
    for stream, bar in ((TerminalBuffer(), True), (io.StringIO(), False)):
        errors = io.StringIO()  # stderr redirected to a file: its lines go there as they are
        with CommandProgress(
            OutputWrapper(stream), OutputWrapper(errors), "Working", 3
        ) as progress:
            assert progress.shown is bar
            for n in range(3):
                progress.update(description=f"Working on {n}")
                progress.line(f"item {n}: done")
                progress.advance()
            progress.error("item 3: failed")
        text = stream.getvalue()
        assert errors.getvalue() == "item 3: failed\n"
        if bar:
            assert ESC in text and "Working on" in text  # the bar, drawn and taken away
            assert [f"item {n}: done" in text for n in range(3)] == [True] * 3
        else:
            assert text.splitlines() == ["item 0: done", "item 1: done", "item 2: done"]


def test_on_one_terminal_an_error_line_is_printed_above_the_bar() -> None:
    screen = TerminalBuffer()
    errors = TerminalBuffer()
    with CommandProgress(OutputWrapper(screen), OutputWrapper(errors), "Working", 1) as progress:
        progress.error("server b: failed")
    assert "server b: failed" in screen.getvalue() and errors.getvalue() == ""


def test_json_or_a_disabled_bar_draws_nothing_even_on_a_terminal() -> None:
    stream = TerminalBuffer()
    with CommandProgress(OutputWrapper(stream), OutputWrapper(io.StringIO()), "x", 2,
                         enabled=False) as progress:  # fmt: skip
        progress.line("only this")
        progress.advance()
    assert stream.getvalue() == "only this\n"
    assert is_terminal(stream) and not is_terminal(io.StringIO())


@pytest.mark.django_db
def test_outbox_retry_of_many_messages_shows_a_bar_only_on_a_terminal() -> None:
    server = MailServer.objects.create(
        name="s", auth_method="password", smtp_host="127.0.0.1", smtp_port=2525
    )
    failed = [
        OutgoingMessage.objects.create(
            server=server, from_address="a@x.example", raw=b"x", status=Status.FAILED
        )
        for _ in range(4)
    ]
    terminal = TerminalBuffer()
    call_command("outbox", "retry", *[str(m.pk) for m in failed], stdout=terminal)
    assert ESC in terminal.getvalue() and "retry 4 messages" in terminal.getvalue()
    OutgoingMessage.objects.update(status=Status.FAILED)
    piped = io.StringIO()
    call_command("outbox", "retry", "--status", "failed", stdout=piped)
    assert piped.getvalue().splitlines() == [f"message {m.pk}: queued" for m in failed]


def _export(count: int) -> dict:
    return {
        "version": 1,
        "servers": [
            {
                "name": f"Imported {n}",
                "auth_method": "password",
                "username": f"app{n}@example.com",
                "smtp_host": "127.0.0.1",
                "smtp_port": 2525,
                "smtp_security": "none",
            }
            for n in range(count)
        ],
    }


def _in_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the console script with a pseudo-terminal as stdin, stdout and stderr; its exit status
    and everything it wrote there."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side closed: the process is done
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, output.decode(errors="replace")


@pytest.mark.nodb
def test_servers_import_draws_a_bar_in_a_terminal_and_stays_plain_when_piped(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = home_env(home, TERM="xterm")
    assert mailgate(home, "migrate", "--verbosity", "0").returncode == 0
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps(_export(30)))
    second.write_text(json.dumps(_export(35)))

    code, screen = _in_a_terminal([*MAILGATE, "servers", "import", str(first)], env)
    assert code == 0, screen
    assert ESC in screen  # the bar (and its removal) are terminal control sequences
    assert "servers" in screen and "created 'Imported 29'" in screen

    piped = mailgate(home, "servers", "import", str(second))
    assert piped.returncode == 0, piped.stderr
    assert ESC not in piped.stdout + piped.stderr
    assert piped.stdout.splitlines() == [
        *(f"created 'Imported {n}'" for n in range(30, 35)),
        *(f"updated 'Imported {n}'" for n in range(30)),
    ]

    code, screen = _in_a_terminal([*MAILGATE, "servers", "import", str(first), "--json"], env)
    assert code == 0, screen
    assert ESC not in screen
    outcome = json.loads(screen)
    assert outcome["created"] == [] and len(outcome["updated"]) == 30
