"""Commands that take generations in: ``import`` (a folder, once) and ``watch`` (a folder, live)."""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from ..errors import InvalidInputError, LocalVaultError
from ..import_report import ImportInterrupted
from ..importer import ImportReport, Mode
from ..progress import ProgressCallback, ProgressEvent
from . import output
from .app import Context, json_option, main, pass_ctx
from .stopping import sigterm_as_ctrl_c

mode_options = [
    click.option("--copy", "copy_mode", is_flag=True, help="Copy files into the vault (default)."),
    click.option("--move", "move_mode", is_flag=True, help="Copy, then delete each source once its row is committed."),
    click.option("--link", "link_mode", is_flag=True, help="Hard-link instead of copying (same filesystem; else copy): the rig must never rewrite its files in place."),
]


CommandFunction = TypeVar("CommandFunction", bound=Callable[..., Any])


def _with_modes(command: CommandFunction) -> CommandFunction:
    """Add --copy/--move/--link; the command gets ``mode``. Two of them together are refused: whichever came last
    would win, and ``--copy --move`` deletes the sources."""
    def with_one_mode(*args: Any, copy_mode: bool, move_mode: bool, link_mode: bool, **kwargs: Any) -> Any:
        chosen = [name for name, given in (("copy", copy_mode), ("move", move_mode), ("link", link_mode)) if given]
        if len(chosen) > 1:
            raise InvalidInputError(f"give one of --copy, --move and --link, not {' and '.join('--' + c for c in chosen)}")
        return command(*args, mode=chosen[0] if chosen else "copy", **kwargs)

    wrapped: Any = functools.update_wrapper(with_one_mode, command)  # (keeps the options declared below it)
    for option in reversed(mode_options):
        wrapped = option(wrapped)
    return cast(CommandFunction, wrapped)


class _FilesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} files/s" if speed else "– files/s", style="progress.data.speed")


@contextmanager
def _import_bar(enabled: bool) -> Iterator[ProgressCallback | None]:
    """Two rows on stderr: files (count, files/s) and bytes (size, bytes/s)."""
    if not enabled or not output.err_console.is_terminal:
        yield None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _FilesPerSecond(),
                  TimeElapsedColumn(), console=output.err_console) as files_bar, \
            Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                     console=output.err_console) as bytes_bar:
        files_task = files_bar.add_task("files", total=None)
        bytes_task = bytes_bar.add_task("bytes", total=None)

        def on_event(event: ProgressEvent) -> None:
            files_bar.update(files_task, advance=event.advance, total=event.total)
            bytes_bar.update(bytes_task, advance=event.bytes_advance, total=event.bytes_total)

        yield on_event


def _folders_hint(result: ImportReport, recursive: bool, what: str) -> None:
    """Sub-folders a command that is not recursive did not look in: A1111 writes into a folder per day."""
    if (count := result.folders_not_entered) and not recursive:
        output.warning(f"{count} sub-folder{'s' if count != 1 else ''} not {what}: add --recursive (-r) to take "
                       "their files too")


def _print_summary(result: ImportReport, verb: str = "import") -> None:
    rate = f" in {result.seconds:.1f} s" if result.seconds and verb == "import" else ""
    output.console.print(f"{verb}: {result.summary()}{rate}", highlight=False)
    if result.ignored and verb == "import":  # (else a .webm a rig wrote would seem lost: only --json counted it)
        output.console.print(f"  {result.ignored} other file(s) not looked at: their names are not .png, .jpg, "
                             ".jpeg, .webp or .mp4 (sidecars, temporary files, other kinds)", highlight=False)
    for path, asset_id in sorted(result.filled.items()):
        output.console.print(output.printable(f"read the sidecar of {path}, come since it was taken, into {asset_id}"),
                             highlight=False)
    if result.imported and not result.duplicates and not result.refused:
        return
    if result.duplicates and not result.imported:
        output.console.print("nothing new: every file not refused is already in this vault" if result.refused
                             else "nothing new: every file is already in this vault", highlight=False)
    kept_back = set(result.retryable)  # refused by the vault's side (a full disk): one line, not one per file
    for path, reason in sorted(result.refused.items()):
        if path not in kept_back:
            output.console.print(output.printable(f"  refused {path}: {output.about(path, reason)}"), highlight=False,
                                 soft_wrap=True)
    if kept_back:
        first = min(kept_back)
        output.console.print(output.printable(f"  {len(kept_back)} file(s) could not be written into the vault, "
                                              f"{first} first: {output.about(first, result.refused.get(first, ''))}"),
                             highlight=False, soft_wrap=True)


@main.command(name="import")
@click.argument("folder", type=click.Path(path_type=Path, exists=True))  # (a file: the library says what to do)
@click.option("--recursive", "-r", is_flag=True, help="Also import files in sub-folders.")
@_with_modes
@click.option("--model", help="Model for files whose metadata does not name one (else \"unknown\").")
@click.option("--prompt", help="Prompt for files whose metadata has none (else \"\").")
@click.option("--workers", type=click.IntRange(1, 64), help="Examining workers, 1 to 64 (default: one per core, at most 8); processes for 1,000 files or more, else threads.")
@json_option("Print the report as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_ctx
def import_(ctx: Context, folder: Path, recursive: bool, mode: Mode, model: str | None, prompt: str | None,
            workers: int | None, as_json: bool, no_progress: bool) -> None:
    """Import a rig's output folder into the workspace (files already in the vault are skipped)."""
    vault = ctx.vault()
    # A service manager's stop (or `timeout`) ends it like Ctrl-C: the files under way are cleaned up.
    try:
        with _import_bar(not as_json and not no_progress) as progress, sigterm_as_ctrl_c():
            result = vault.workspace.import_folder(folder, recursive=recursive, mode=mode, model=model,
                                                   prompt=prompt, progress=progress, workers=workers)
    except KeyboardInterrupt as exc:
        done = (f"{len(exc.report.imported):,} file(s) committed before the stop"
                if isinstance(exc, ImportInterrupted) else "the files committed before the stop")
        raise KeyboardInterrupt(f"interrupted: {done} are in the vault; run the same import again for the rest "
                                "(files already in are skipped)") from None
    # Files the vault could not take are not the files' fault: the run did not do what was asked (exit 8).
    failure = (f"{len(result.retryable)} file(s) could not be written into the vault (the disk full or read-only, "
               "the database locked too long); fix that and run the same import again: the files already in are "
               "skipped") if result.retryable else None
    if as_json:
        report = {"imported": result.imported, "duplicates": result.duplicates, "refused": result.refused,
                  "ignored": result.ignored, "folders_not_entered": result.folders_not_entered,
                  "filled": result.filled, "retryable": result.retryable,
                  "bytes_imported": result.bytes_imported, "seconds": round(result.seconds, 3)}
        if failure:  # one JSON object on stdout, with the error every --json failure carries
            report["error"] = {"message": failure, "exit_code": 8, "kind": "StorageError"}
        output.print_json(report)
    else:
        _print_summary(result)
        _folders_hint(result, recursive, "looked in")
    if failure:
        output.error(failure)
        click.get_current_context().exit(8)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--recursive", "-r", is_flag=True, help="Also watch sub-folders.")
@_with_modes
@click.option("--model", help="Model for files whose metadata does not name one.")
@click.option("--prompt", help="Prompt for files whose metadata has none.")
@click.option("--quiet", "-q", is_flag=True, help="No line per file; only the summary at the end.")
@json_option("Print one JSON object per line: each event as it happens, then the summary.")
@pass_ctx
def watch(ctx: Context, folder: Path, recursive: bool, mode: Mode, model: str | None, prompt: str | None,
          quiet: bool, as_json: bool) -> None:
    """Import files as a rig writes them, until Ctrl-C; then print a summary."""
    from ..watch import Watcher, WatchEvent, WatchReport

    caught_up = threading.Event()
    reader_gone = threading.Event()  # stdout closed (`watch --json | head -1`): the watch ends, as `yes | head`

    def on_event(event: WatchEvent) -> None:
        if quiet or (event.kind == "duplicate" and not caught_up.is_set() and not as_json):
            return  # (the catch-up's duplicates: a folder watched again holds thousands; counted once below)
        try:
            show(event)
        except (BrokenPipeError, SystemExit):  # (rich turns a broken pipe into SystemExit(1))
            reader_gone.set()
            watcher.stop()  # (from on_event: asks it to stop; the files under way are finished)

    def show(event: WatchEvent) -> None:
        if as_json:
            output.print_json({"event": event.kind, "path": event.path, "at": output.iso_time(event.at),
                                    "asset_id": event.asset_id, "job_id": event.job_id, "message": event.message}, line=True)
        elif event.kind == "imported":
            output.console.print(output.printable(f"imported {event.path} → {event.asset_id}"), highlight=False)
        elif event.kind == "duplicate":
            output.console.print(output.printable(f"already in the vault: {event.path}"), highlight=False)
        elif event.kind == "sidecar_read":
            output.console.print(output.printable(f"read the late sidecar of {event.path} into {event.asset_id}"),
                                 highlight=False)
        elif event.kind in ("refused", "error"):
            output.warning(f"{event.kind} {event.path}: {output.about(event.path, event.message or '')}")
        elif event.kind == "folder_not_entered":
            output.warning(output.printable(f"{event.path}: a new sub-folder, not watched: add --recursive (-r) to "
                                            "take its files"))
        else:
            output.warning(f"{event.path}: {event.kind.replace('_', ' ')}")

    def summarize(report: WatchReport) -> None:
        if as_json:
            output.print_json({"summary": {"imported": report.imported_total,
                                                "duplicates": report.duplicates_total,
                                                "refused": report.refused_total,
                                                "too_old": report.too_old,
                                                "folders_not_entered": report.folders_not_entered,
                                                "refusals": report.refused}}, line=True)
        else:
            _print_summary(report, verb="watch")

    watcher = Watcher(ctx.vault(), folder, mode=mode, recursive=recursive, model=model, prompt=prompt,
                      on_event=on_event)
    # on_event already shows every problem with a file; not a --move source kept, nor what no event carries
    output.show_library_logs(False, still_from=("localvault._recovered", "localvault.importer.notices",
                                                "localvault.watch.notices", "localvault.pending",
                                                "localvault._write_intents", "localvault.workspace"))
    with sigterm_as_ctrl_c():  # a service manager's stop ends it like Ctrl-C
        try:
            watcher.start()
            caught_up.set()
            if not as_json:
                _folders_hint(watcher.report, recursive, "watched")
            if (known := watcher.report.duplicates_total) and not quiet and not as_json:
                output.console.print(f"already in the vault: {known:,} file{'s' if known != 1 else ''} of the folder",
                                     highlight=False)
            output.err_console.print(f"watching {watcher.folder} (Ctrl-C to stop)", highlight=False)
            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with "&" by a shell that is not interactive
                output.warning("Ctrl-C (SIGINT) is ignored in this process (started in the background?): "
                               "stop it with SIGTERM ('kill PID')")
            while watcher.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        except (BrokenPipeError, SystemExit):  # a line of this thread's found stdout closed (rich: SystemExit)
            reader_gone.set()
        # A second Ctrl-C (or SIGTERM, still ours until the end) must not cut short the files under way:
        # their temporary files would stay.
        slow_stop = threading.Timer(1.0, output.warning, ["stopping: finishing the files under way"])
        slow_stop.daemon = True
        slow_stop.start()  # (a backlog of thousands of files takes seconds: say why nothing seems to happen)
        while True:
            try:
                result = watcher.stop()
                break
            except KeyboardInterrupt:
                output.warning("stopping: finishing the files under way")
            except LocalVaultError:  # it stopped on an error: say what it did, then why
                summarize(watcher.report)
                raise
            finally:
                slow_stop.cancel()
    if reader_gone.is_set():  # nobody to read a summary: end as click does on a closed pipe
        click.get_current_context().exit(1)
    summarize(result)

