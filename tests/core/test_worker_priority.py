"""The worker gives up CPU priority (MAILGATE_WORKER_NICE) so the web process and the relay, which
answer applications that wait, are served first; in `mailgate run` only its thread does."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mailgate.worker import Worker
from tests.processes import MAILGATE, ROOT, home_env, mailgate


def thread_nice(process: int, thread: int) -> int:
    """The nice value of one thread, as the kernel reports it (field 19 of its stat)."""
    stat = Path(f"/proc/{process}/task/{thread}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.django_db(transaction=True)
def test_only_the_worker_thread_is_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailgate.worker.WORKER_STEPS", ["mailgate.core.heartbeat.heartbeat_step"])
    seen: dict[str, int] = {}
    started = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def run() -> None:
        Worker(nice=3).run(max_cycles=1)
        seen["worker"] = thread_nice(os.getpid(), threading.get_native_id())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert seen["worker"] == min(19, started + 3)
    assert thread_nice(os.getpid(), threading.get_native_id()) == started


def test_a_worker_process_runs_below_the_default_priority(tmp_path: Path) -> None:
    """`mailgate worker` with MAILGATE_WORKER_NICE=10: its main thread is 10 lower."""
    assert mailgate(tmp_path, "migrate", "--verbosity", "0").returncode == 0
    worker = subprocess.Popen(
        [*MAILGATE, "worker"],
        env=home_env(tmp_path, MAILGATE_WORKER_NICE="10"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        nice = thread_nice(worker.pid, worker.pid)
        while nice != 10 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
            nice = thread_nice(worker.pid, worker.pid)
        assert nice == 10
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@pytest.mark.parametrize("command", ["worker", "run"])
def test_a_bad_worker_nice_stops_the_command_naming_the_variable(
    tmp_path: Path, command: str
) -> None:
    """Read with the settings: `mailgate run` stops before it creates or starts anything."""
    assert mailgate(tmp_path, "migrate", "--verbosity", "0").returncode == 0
    result = subprocess.run(
        [*MAILGATE, command],
        env=home_env(tmp_path, MAILGATE_WORKER_NICE="20"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "MAILGATE_WORKER_NICE" in result.stderr and "0 to 19" in result.stderr
    assert "Traceback" not in result.stderr
    assert "administrator" not in result.stdout
