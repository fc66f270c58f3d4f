"""Rendering for the CLI: JSON, tables, one-line errors and progress bars."""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from ..models import CONTROL, SURROGATES
from ..progress import ProgressCallback, ProgressEvent
from ..timestamps import format_time

# No markup: prompts ("a [red] fox"), file names ("[1].png") and messages ("the [remote] table") print as they are.
# No folding of printed lines (tables still fit the width): a path or id captured by a script stays whole.
console = Console(markup=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False)


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON types; times as the vault's text (UTC, milliseconds: ``2026-11-27T19:20:00.000Z``)."""
    if isinstance(value, BaseModel):  # field by field: pydantic's own JSON of a time has six digits
        return {name: to_jsonable(field) if isinstance(field, (BaseModel, datetime, list, tuple))
                else to_jsonable_python(field) for name, field in value}
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return to_jsonable(asdict(value))
    return value


def tolerate_undecodable_names() -> None:
    """Print a file name that is not UTF-8 (Python holds its bytes as lone surrogates) as ``\\udcff``, not
    as an UnicodeEncodeError after the work is done: stdout and stderr are strict under a UTF-8 locale."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def print_json(value: Any, *, line: bool = False) -> None:
    """``value`` as JSON on stdout; ``line``: compact on one line and flushed (JSON Lines, for a stream of events).

    Always valid UTF-8: a file name that is not UTF-8 is written with JSON escapes (``"\\udcff"``), which a
    JSON reader turns back into the same surrogate Python gave it (``os.fsencode`` then gives its bytes).
    """
    text = json.dumps(to_jsonable(value), ensure_ascii=False, indent=None if line else 2, default=str)
    if SURROGATES.search(text):
        text = SURROGATES.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise OSError(errno.EBADF, "standard output is closed")
    sys.stdout.write(text + "\n")
    if line:
        sys.stdout.flush()


def error(message: str) -> None:
    """One ``error:`` line on stderr (a file name's line break escaped: one line, whatever it names)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", printable(message)), highlight=False, soft_wrap=True)


def warning(message: str) -> None:
    """One ``warning:`` line on stderr, as :func:`error`."""
    err_console.print(Text.assemble(("warning:", "yellow"), " ", printable(message)), highlight=False, soft_wrap=True)


class LogToConsole(logging.Handler):
    """Shows the library's log warnings and errors on stderr as ``warning:`` lines (the library never prints)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.only_from: tuple[str, ...] | None = None  # None: every logger of localvault

    def emit(self, record: logging.LogRecord) -> None:
        if self.only_from is None or record.name in self.only_from:
            warning(record.getMessage())


def show_library_logs(show: bool = True, *, still_from: tuple[str, ...] = ()) -> None:
    """Route localvault's log warnings to stderr (once), or, with ``show=False``, hide them again, except
    those of the loggers named in ``still_from``."""
    logger = logging.getLogger("localvault")
    handler = next((h for h in logger.handlers if isinstance(h, LogToConsole)), None)
    if handler is None:
        handler = LogToConsole()
        logger.addHandler(handler)
    handler.only_from = None if show else still_from
    # Other libraries' records are not the user's business (the watcher turns watchdog's "queue overflowed"
    # into its own warning): without a handler, Python's last resort would print them raw on stderr.
    dependencies = logging.getLogger("watchdog")
    if not dependencies.handlers:
        dependencies.addHandler(logging.NullHandler())


#: The width of a table written to a pipe or a file (no terminal to fit): as wide as its rows need, up to this.
PIPED_WIDTH = 1000
#: Columns shown whole on one line however narrow the terminal (a UUID to copy into the next command).
WHOLE_COLUMNS = {"id": 36}
#: Below this width, a terminal's table shows ids by their first 8 digits (which every command takes, as a
#: prefix): a whole one left 44 of 80 columns to the six others, folding a date over five lines.
WHOLE_IDS_FROM = 120
SHORT_ID = 8


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]], *,
          ids_by_prefix: bool = True) -> None:
    """A table on stdout; the other columns narrow (folding their text) so that an id stays whole (on a
    terminal narrower than :data:`WHOLE_IDS_FROM`, its first :data:`SHORT_ID` digits, for ids the commands
    take by a prefix: ``ids_by_prefix``)."""
    # Piped or redirected (`ls | grep 2026-11-28`), rich would fold every cell to 80 columns: each row on one line.
    piped = not console.is_terminal and "COLUMNS" not in os.environ
    short_ids = ids_by_prefix and not piped and console.width < WHOLE_IDS_FROM
    columns = list(columns)
    grid = Table(title=title, show_lines=False)
    for column in columns:
        width = WHOLE_COLUMNS.get(column)
        grid.add_column(column, overflow="fold", no_wrap=width is not None,
                        min_width=SHORT_ID if width and short_ids else width)
    for row in rows:
        cells = ["" if v is None else str(v) for v in row]
        grid.add_row(*(c[:SHORT_ID] if short_ids and name in WHOLE_COLUMNS else c for name, c in zip(columns, cells,
                                                                                                     strict=True)))
    (Console(markup=False, soft_wrap=True, width=PIPED_WIDTH) if piped else console).print(grid)


def tag_list(tags: Iterable[str]) -> str:
    """Tags as one line, separated by ", "; a tag that holds a comma (or a quote) is shown quoted."""
    return ", ".join(json.dumps(tag, ensure_ascii=False) if "," in tag or '"' in tag else tag for tag in tags)


def printable(text: str) -> str:
    """``text`` with its control characters as escapes (``\\n``): a file named ``a\\n  refused b.png`` must not
    print as two lines of a report."""
    return CONTROL.sub(lambda found: repr(found.group())[1:-1], text)


def about(path: str, reason: str) -> str:
    """``reason`` without the path it starts with, for a line that names the path already ("refused PATH: …")."""
    return reason[len(path):].lstrip(": ") if reason.startswith(f"{path} ") or reason.startswith(f"{path}:") else reason


def iso_time(seconds: float) -> str:
    """A time.time() value as the ISO-8601 UTC text the vault's other times are shown in (milliseconds)."""
    return format_time(datetime.fromtimestamp(seconds, tz=timezone.utc))


def short(text: str | None, width: int = 50) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


class _BytesColumn(ProgressColumn):
    """Bytes done / total and bytes per second, for the stages that report bytes (blank for the others)."""

    def render(self, task: Task) -> Text:
        done = task.fields.get("bytes_done")
        if done is None:
            return Text("")
        total = task.fields.get("bytes_total")
        speed = f"{filesize.decimal(int(done / task.elapsed))}/s" if task.elapsed else "–/s"
        shown = f"{filesize.decimal(done)}/{filesize.decimal(total)}" if total else filesize.decimal(done)
        return Text(f"{shown} {speed}", style="progress.download")


@contextmanager
def progress_bars(enabled: bool = True, with_bytes: bool = False) -> Iterator[ProgressCallback | None]:
    """A progress callback drawing one rich bar per stage (on stderr), or None when disabled.

    The bar counts items (rows, files); with ``with_bytes``, a stage that
    reports bytes also shows them, with their rate.
    """
    if not enabled or not err_console.is_terminal:
        yield None
        return
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if with_bytes:
        columns.append(_BytesColumn())
    tasks: dict[str, TaskID] = {}
    bytes_done: dict[str, int] = {}
    with Progress(*columns, console=err_console, transient=False) as bar:

        def on_event(event: ProgressEvent) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total)
            task = tasks[event.stage]
            fields: dict[str, Any] = {}
            if event.bytes_total is not None or event.bytes_advance:
                bytes_done[event.stage] = fields["bytes_done"] = bytes_done.get(event.stage, 0) + event.bytes_advance
                if event.bytes_total is not None:
                    fields["bytes_total"] = event.bytes_total
            bar.update(task, advance=event.advance, total=event.total if event.total is not None else None, **fields)

        yield on_event
