"""A DeprecationWarning raised from mailgate's own code fails the test run (pyproject's filterwarnings).

Shown end to end: a throw-away test file run by pytest with the project's configuration, where one
test raises a DeprecationWarning from a module named `mailgate.…` and another from a library.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import warnings


def warn_from(module: str, message: str) -> None:
    """Raise a DeprecationWarning whose origin is `module`, as code in that module would."""
    code = compile("warnings.warn(message, DeprecationWarning)", module + ".py", "exec")
    exec(code, {"__name__": module, "warnings": warnings, "message": message})


def test_from_mailgate() -> None:
    warn_from("mailgate.outbox.example", "old mailgate call")


def test_from_a_library() -> None:
    warn_from("somelibrary.example", "old library call")
'''


def test_a_deprecation_warning_from_mailgate_code_fails_the_run(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            "--noconftest",
            "-p",
            "no:cacheprovider",
            "-q",
            str(probe),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 1 passed" in output
    assert "test_from_mailgate - DeprecationWarning: old mailgate call" in output
    # A library's deprecation is reported in the warnings summary, not turned into a failure.
    assert "DeprecationWarning: old library call" in output
