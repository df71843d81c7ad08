"""What people and machines see: progress on stderr, results on stdout (human or JSON).

Stages report progress through a `Progress` they are handed; they never print. Results are
frozen dataclasses turned into JSON here, at the edge.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from factory.redact import redact


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths, datetimes and enums as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("internal")
        }
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def dumps(value: Any) -> str:
    return redact(json.dumps(to_jsonable(value), indent=2, sort_keys=False))


class Progress:
    """Progress lines for long work: rich on a terminal, plain timestamped lines otherwise."""

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.started = time.monotonic()
        self._console: Any = None
        if not quiet and self.stream.isatty():
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)

    @property
    def rich(self) -> bool:
        return self._console is not None

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:6.1f}s"

    def info(self, message: str) -> None:
        if self.quiet:
            return
        message = redact(message)
        if self._console is not None:
            self._console.print(f"[dim]{self._elapsed()}[/dim] {message}", markup=False)
        else:
            print(f"{self._elapsed()} {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        if self.quiet:
            return
        message = redact(message)
        if self._console is not None:
            self._console.print(f"[yellow]warning:[/yellow] {message}")
        else:
            print(f"warning: {message}", file=self.stream, flush=True)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[TaskHandle]:
        """A bar on a terminal; start/end lines otherwise."""
        handle = TaskHandle(self, description, total)
        if self._console is not None and not self.quiet:
            from rich.progress import (
                BarColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            with RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self._console,
                transient=False,
            ) as bar:
                handle._bar = bar
                handle._task_id = bar.add_task(description, total=total)
                yield handle
        else:
            self.info(f"{description} ...")
            yield handle
            self.info(f"{description}: done")


class TaskHandle:
    def __init__(self, progress: Progress, description: str, total: float | None) -> None:
        self.progress = progress
        self.description = description
        self.total = total
        self._bar: Any = None
        self._task_id: Any = None
        self._last_plain = ""

    def update(self, completed: float | None = None, status: str | None = None) -> None:
        if self._bar is not None:
            desc = f"{self.description} {redact(status)}" if status else self.description
            self._bar.update(self._task_id, completed=completed, description=desc)
            return
        line = status or ""
        if completed is not None and self.total:
            line = f"{completed:.0f}/{self.total:.0f} {line}".strip()
        if line and line != self._last_plain:
            self._last_plain = line
            self.progress.info(f"{self.description}: {line}")


def emit(result: Any, output: str, human: str | None = None, stream: IO[str] | None = None) -> None:
    """Print a command's result: JSON for machines, else the given human text."""
    out = stream or sys.stdout
    if output == "json":
        print(dumps(result), file=out)
    elif human is not None:
        print(redact(human), file=out)
