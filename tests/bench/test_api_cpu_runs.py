"""`python -m tests.bench.api_cpu`, small: the API's CPU figures in the README come from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_cpu_benchmark_reports_cpu_queries_and_the_web_process() -> None:
    env = {**os.environ, "BENCH_API_POSTS": "30", "PYTHONPATH": str(ROOT)}
    env.pop("MAILGATE_DATABASE_URL", None)
    env.pop("BENCH_CALLGRIND", None)
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.api_cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    found = json.loads(lines[-1])
    assert found["backend"] == "sqlite" and found["posts"] == 30
    assert found["queries_per_post"] == 3
    # A batch of 100: key, rate, BEGIN, server list, 4 INSERTs of up to 31 rows (SQLite), COMMIT.
    assert found["queries_per_batch"] <= 10
    assert len(found["rounds"]) == 3 and all(r > 0 for r in found["rounds"])
    assert found["web_cpu_ms_per_post"] > 0 and found["web_cpu_ms_per_batched_message"] > 0
    assert any("ms CPU per POST" in line for line in lines)
