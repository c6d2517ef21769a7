"""Progress of a long command (`servers import`, `fetch`, `outbox retry`): a progress bar when its
output is a terminal, and nothing but the command's own lines when the output is piped, redirected
or machine-readable (`--json`): no control characters then, and the same lines either way.

    with CommandProgress(self.stdout, self.stderr, "Fetching", len(servers)) as progress:
        for server in servers:
            progress.update(description=f"Fetching {server.name}")
            ...
            progress.line(f"{server.name}: 3 new messages")   # above the bar on a terminal
            progress.advance()
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class Stream(Protocol):
    def write(self, text: str, /) -> Any: ...

    def isatty(self) -> bool: ...


def is_terminal(stream: Any) -> bool:
    """True when `stream` (a file, or Django's OutputWrapper around one) is a terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # closed or detached
        return False


class CommandProgress:
    """A progress bar on `stdout` when it is a terminal and `enabled`; otherwise `line()` and
    `error()` write plain lines to stdout / stderr (Django's OutputWrappers, which end each line)
    and the rest does nothing."""

    def __init__(
        self,
        stdout: Stream,
        stderr: Stream,
        description: str,
        total: int | None = None,
        *,
        enabled: bool = True,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.shown = enabled and is_terminal(stdout)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._description = description
        self._total = total

    def __enter__(self) -> Self:
        if self.shown:
            # Django's OutputWrapper keeps the stream it wraps as `_out`; draw on that.
            file = getattr(self.stdout, "_out", self.stdout)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=file, force_terminal=True),  # type: ignore[arg-type]
                transient=True,  # the lines stay, the bar goes when done
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=self._total)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(
        self,
        *,
        description: str | None = None,
        completed: int | None = None,
        total: int | None = None,
    ) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, description=description, completed=completed, total=total
            )

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def line(self, text: str) -> None:
        """A line of the command's output (above the bar while it is shown)."""
        if self._progress is not None:
            self._progress.console.print(Text(text), soft_wrap=True)
        else:
            self.stdout.write(text)

    def error(self, text: str) -> None:
        """A line for stderr. While the bar is shown and stderr is the same kind of terminal,
        it is printed above the bar (writing around it would tear the bar)."""
        if self._progress is not None and is_terminal(self.stderr):
            self._progress.console.print(Text(text, style="red"), soft_wrap=True)
        else:
            self.stderr.write(text)
