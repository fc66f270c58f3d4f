"""Rendering for the CLI: JSON, tables, one-line errors and progress bars."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..progress import ProgressCallback, ProgressEvent

console = Console()
err_console = Console(stderr=True)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return to_jsonable(asdict(value))
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), ensure_ascii=False, indent=2, default=str) + "\n")


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


class LogToConsole(logging.Handler):
    """Shows the library's log warnings and errors on stderr as ``warning:`` lines (the library never prints)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        warning(record.getMessage())


def show_library_logs(show: bool = True) -> None:
    """Route localvault's log warnings to stderr (once), or, with ``show=False``, hide them again."""
    logger = logging.getLogger("localvault")
    handler = next((h for h in logger.handlers if isinstance(h, LogToConsole)), None)
    if handler is None:
        handler = LogToConsole()
        logger.addHandler(handler)
    handler.setLevel(logging.WARNING if show else logging.CRITICAL + 1)


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    grid = Table(title=title, show_lines=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("" if v is None else str(v) for v in row))
    console.print(grid)


def short(text: str | None, width: int = 50) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


@contextmanager
def progress_bars(enabled: bool = True, with_bytes: bool = False) -> Iterator[ProgressCallback | None]:
    """A progress callback drawing one rich bar per stage (on stderr), or None when disabled."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if with_bytes:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=err_console, transient=False) as bar:

        def on_event(event: ProgressEvent) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total)
            task = tasks[event.stage]
            bar.update(task, advance=event.advance, total=event.total if event.total is not None else None)

        yield on_event
