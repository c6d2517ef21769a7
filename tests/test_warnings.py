"""A DeprecationWarning raised from mailgate's own code fails the test run (pyproject's filterwarnings).

Shown end to end: a throw-away test file run by pytest with the project's configuration. A
DeprecationWarning from a module named `mailgate.…` fails its test, and so do the two library
deprecations mailgate moved off (ninja's (status, body) tuples, httpx's `verify=<path>`); any
other library's deprecation is only listed in the warnings summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import warnings

import certifi
import httpx
from ninja import NinjaAPI
from ninja.testing import TestClient


def warn_from(module: str, message: str) -> None:
    """Raise a DeprecationWarning whose origin is `module`, as code in that module would."""
    code = compile("warnings.warn(message, DeprecationWarning)", module + ".py", "exec")
    exec(code, {"__name__": module, "warnings": warnings, "message": message})


def test_from_mailgate() -> None:
    warn_from("mailgate.outbox.example", "old mailgate call")


def test_from_a_library() -> None:
    warn_from("somelibrary.example", "old library call")


def test_a_status_tuple() -> None:
    api = NinjaAPI(urls_namespace="probe")

    @api.get("/probe", response={201: dict})
    def probe(request):
        return 201, {}

    TestClient(api).get("/probe")


def test_a_path_as_httpx_verify() -> None:
    httpx.Client(verify=certifi.where()).close()
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
        env={**os.environ, "COLUMNS": "200"},  # the summary lines whole, not cut at 80 columns
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "3 failed, 1 passed" in output
    assert "test_from_mailgate - DeprecationWarning: old mailgate call" in output
    assert "test_a_status_tuple - DeprecationWarning: Returning tuple" in output
    assert (
        "test_a_path_as_httpx_verify - DeprecationWarning: `verify=<str>` is deprecated" in output
    )
    # A library's deprecation is reported in the warnings summary, not turned into a failure.
    assert "DeprecationWarning: old library call" in output
