"""`make chaos`: the full fault matrix and the soak, printed as tables.

`python -m tests.chaos.run [--bounded] [--only NAME ...] [--soak N]`
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

from tests.chaos.faults import SCENARIOS
from tests.chaos.lab import Row


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | database | messages | lost | duplicated | recovery (s) | drained (s) | ok | note |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        rec = f"{r.recovery:.1f}" if r.recovery is not None else "-"
        drained = f"{r.drained:.1f}" if r.drained is not None else "-"
        lines.append(
            f"| {r.fault} | {r.database} | {r.messages} | {r.lost} | {r.duplicated} | {rec} | "
            f"{drained} | {'yes' if r.ok else 'NO'} | {r.note} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bounded", action="store_true", help="the short version make test runs")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    parser.add_argument("--soak", type=int, default=50_000, help="messages in the soak (0: none)")
    options = parser.parse_args()
    rows: list[Row] = []
    failed = False
    for name, (scenario, kinds) in SCENARIOS.items():
        if options.only is not None and name not in options.only:
            continue
        for kind in kinds:
            with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as folder:
                try:
                    row = scenario(kind, Path(folder), options.bounded)
                except Exception as exc:
                    traceback.print_exc()
                    row = Row(name, kind, 0, -1, -1, None, note=f"ERROR {exc}"[:200])
                    row.lost = 1
            rows.append(row)
            failed = failed or not row.ok
            print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if options.soak:
        from tests.chaos.soak import soak

        with tempfile.TemporaryDirectory(prefix="chaos-soak-") as folder:
            report = soak(options.soak, Path(folder))
        print()
        print(report.table())
        failed = failed or not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
