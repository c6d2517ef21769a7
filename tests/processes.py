"""`mailgate` as a real process on a MAILGATE_HOME of its own (SQLite), for tests of the console
script: exit statuses, what it prints, how it behaves on a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.outbox.own_database import ROOT

MAILGATE = [sys.executable, "-m", "mailgate.cli"]


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without the test run's MAILGATE_* settings, on `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(MAILGATE_HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    return env


def mailgate(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILGATE, *args],
        env=home_env(home),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
