"""`mailgate doctor [--json]`: the deployment's and every server's health, and what to do about it.

Exit status: 0 when nothing needs action (only ok findings), 1 when a warning or an error needs
action (an unreachable database included), 2 on bad flags (argparse).
"""

from __future__ import annotations

import io
import json
import shutil
from argparse import ArgumentParser
from collections import Counter
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mailgate.diagnostics.health import (
    Finding,
    Level,
    ServerReport,
    server_reports,
    system_findings,
)

LABELS = {Level.OK: "ok", Level.WARNING: "WARNING", Level.ERROR: "ERROR"}


class Command(BaseCommand):
    help = (
        "Check the configuration, the database, the workers and every mail server. Exit 0 when "
        "nothing needs action, 1 when a warning or an error does, 2 on bad flags."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="print the findings as JSON (for monitoring)"
        )

    def handle(self, *args: Any, json: bool, **options: Any) -> None:
        now = timezone.now()
        system = system_findings(now=now)
        reports: list[ServerReport] = []
        if not any(
            f.level == Level.ERROR and f.check in ("database", "migrations") for f in system
        ):
            reports = server_reports(now=now)
        everything = [*system, *(f for r in reports for f in r.findings)]
        counts = Counter(f.level for f in everything)
        if json:
            self.stdout.write(_as_json(now.isoformat(), system, reports, counts))
        elif self.stdout.isatty():
            self.stdout.write(_as_table(system, reports, color=not options.get("no_color")))
        else:
            self.stdout.write(_as_lines(system, reports))
        problems = [
            _plural(counts[level], str(level))
            for level in (Level.ERROR, Level.WARNING)
            if counts[level]
        ]
        if problems:
            verb = "needs" if counts[Level.ERROR] + counts[Level.WARNING] == 1 else "need"
            raise CommandError(
                f"{' and '.join(problems)} {verb} action (see each Fix).", returncode=1
            )
        if not json:
            self.stdout.write("Nothing needs action.")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _server_heading(report: ServerReport) -> str:
    s = report.server
    q = report.queue
    return (
        f'Server "{s.name}" ({s.auth_label}, {s.get_status_display()}'
        f"{'' if s.active else ', inactive'}): queued {q.queued}, deferred {q.deferred}, "
        f"held {q.held}, sent 24 h {q.sent_24h}, failed 24 h {q.failed_24h}"
    )


def _finding_lines(finding: Finding) -> list[str]:
    label = LABELS[finding.level]
    head = f"  {label:<8} {finding.title}"
    if finding.level == Level.OK:
        return [f"{head}{' — ' + finding.detail if finding.detail else ''}"]
    lines = [head]
    if finding.detail:
        lines.append(f"           {finding.detail}")
    if finding.fix:
        lines.append(f"           Fix: {finding.fix}")
    if finding.fix_command:
        lines.append(f"           Run: {finding.fix_command}")
    if finding.fix_url:
        lines.append(f"           Open: {_absolute(finding.fix_url)}")
    return lines


def _absolute(url: str) -> str:
    """A console page's address as the browser opens it (MAILGATE_PUBLIC_URL)."""
    return urljoin(settings.MAILGATE_PUBLIC_URL.rstrip("/") + "/", url)


def _with_address(finding: Finding) -> Finding:
    return replace(finding, fix_url=_absolute(finding.fix_url)) if finding.fix_url else finding


def _fix_cell(finding: Finding) -> str:
    parts = [finding.fix] if finding.fix else []
    if finding.fix_command:
        parts.append(f"Run: {finding.fix_command}")
    if finding.fix_url:
        parts.append(f"Open: {_absolute(finding.fix_url)}")
    return "\n".join(parts)


def _as_lines(system: list[Finding], reports: list[ServerReport]) -> str:
    lines = ["System"]
    for f in system:
        lines.extend(_finding_lines(f))
    if not reports and not any(
        f.check in ("database", "migrations") and f.needs_action for f in system
    ):
        lines.append("No mail server yet: add one with `mailgate servers add` or the console.")
    for report in reports:
        lines.append(_server_heading(report))
        for f in report.findings:
            lines.extend(_finding_lines(f))
    return "\n".join(lines)


def _as_table(system: list[Finding], reports: list[ServerReport], *, color: bool = True) -> str:
    table = Table("Where", "Level", "Finding", "Fix", show_lines=True)
    style = {Level.OK: "green", Level.WARNING: "yellow", Level.ERROR: "bold red"}
    rows = [("System", f) for f in system]
    rows += [(r.server.name, f) for r in reports for f in r.findings]
    for where, f in rows:
        text = f.title + (f"\n{f.detail}" if f.detail else "")
        table.add_row(
            where, f"[{style[f.level]}]{LABELS[f.level]}[/]", Text(text), Text(_fix_cell(f))
        )
    buffer = io.StringIO()
    width = max(shutil.get_terminal_size().columns, 100)
    Console(
        file=buffer, width=width, force_terminal=True, color_system="auto" if color else None
    ).print(table)
    return buffer.getvalue().rstrip("\n")


def _as_json(
    checked_at: str, system: list[Finding], reports: list[ServerReport], counts: Counter[Level]
) -> str:
    document = {
        "checked_at": checked_at,
        "needs_action": bool(counts[Level.ERROR] or counts[Level.WARNING]),
        "counts": {str(level): counts[level] for level in Level},
        "system": [_with_address(f).as_dict() for f in system],
        "servers": [
            {
                "id": r.server.pk,
                "name": r.server.name,
                "auth_method": r.server.auth_method,
                "status": r.server.status,
                "active": r.server.active,
                "level": str(r.level),
                "queue": {
                    "queued": r.queue.queued,
                    "sending": r.queue.sending,
                    "deferred": r.queue.deferred,
                    "held": r.queue.held,
                    "failed_24h": r.queue.failed_24h,
                    "sent_24h": r.queue.sent_24h,
                },
                "findings": [_with_address(f).as_dict() for f in r.findings],
            }
            for r in reports
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)
