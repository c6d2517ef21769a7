"""The fault matrix, bounded (`make test`): every row must lose nothing and duplicate at most one
message per crash. `make chaos` runs the full version and prints the table (tests/chaos/run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.faults import SCENARIOS
from tests.chaos.lab import Row

pytestmark = pytest.mark.nodb

CASES = [
    pytest.param(name, kind, id=f"{name}-{kind}")
    for name, (_, kinds) in SCENARIOS.items()
    for kind in kinds
]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_fault(name: str, kind: str, tmp_path: Path) -> None:
    scenario, _ = SCENARIOS[name]
    row: Row = scenario(kind, tmp_path, True)
    assert row.lost == 0, row
    assert row.duplicated <= row.allowed_duplicates, row
    assert row.within_bound, row
    assert row.recovery is not None and row.recovery < 60, row
