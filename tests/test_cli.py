"""The issue-2 CLI tour, end to end through click, plus the one-line error contract."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from localvault import Vault
from localvault import db as db_module
from localvault._disk import filesystem_type
from localvault.cli import main

USER = "6f1c0000-0000-4000-8000-000000000001"


def _png(path: Path, shade: int) -> Path:
    Image.new("RGB", (24, 24), (shade, 10, 200)).save(path)
    return path


@pytest.fixture
def cli(tmp_path: Path):
    runner = CliRunner()
    vault_path = tmp_path / "vault"

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, ["--vault", str(vault_path), *args], catch_exceptions=False)
        assert result.exit_code == code, (args, result.output, result.stderr if hasattr(result, "stderr") else "")
        return result.output

    run("init", "--user", USER)
    return run


def test_tour(cli, tmp_path: Path) -> None:
    first = json.loads(cli("add", str(_png(tmp_path / "a.png", 1)), "--seed", "42", "--prompt", "a red fox",
                           "--model", "sdxl", "--json"))
    assert first["generation_seed"] == 42 and first["model_used"] == "sdxl" and first["user_id"] == USER
    second = json.loads(cli("add", str(_png(tmp_path / "b.png", 2)), "--job", first["job_id"], "--json"))
    assert second["job_id"] == first["job_id"] and second["asset_index"] == 1
    listing = json.loads(cli("ls", "workspace", "--json"))
    assert [i["id"] for i in listing["items"]] == [second["id"], first["id"]]

    collection = json.loads(cli("collections", "create", "Foxes", "--description", "red ones", "--json"))
    kept = json.loads(cli("save", first["id"], "--title", "Fox", "--tag", "a", "--tag", "b", "--collection", "Foxes",
                          "--favorite", "--json"))
    assert kept["collection_id"] == collection["id"] and kept["tags"] == ["a", "b"] and kept["is_favorite"]
    found = json.loads(cli("ls", "library", "--tag", "a", "--favorite", "--collection", "Foxes", "--search", "fox", "--json"))
    assert [i["id"] for i in found["items"]] == [kept["id"]]
    assert json.loads(cli("collections", "ls", "--json"))[0]["asset_count"] == 1

    cli("collections", "create", "Other")
    updated = json.loads(cli("update", kept["id"], "--title", "Fox 2", "--add-tag", "c", "--remove-tag", "a",
                             "--visibility", "public", "--move-to", "Other", "--json"))
    assert updated["title"] == "Fox 2" and updated["tags"] == ["b", "c"] and updated["visibility"] == "public"
    counts = {c["name"]: c["asset_count"] for c in json.loads(cli("collections", "ls", "--json"))}
    assert counts == {"Foxes": 0, "Other": 1}
    cli("collections", "rename", "Other", "Renamed")
    cli("collections", "delete", "Renamed")
    assert json.loads(cli("ls", "library", "--json"))["items"][0]["collection_id"] is None

    out = tmp_path / "out"
    out.mkdir()
    cli("export", kept["id"], str(out))
    assert (out / f"{kept['id']}.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert "clean" in cli("verify")
    assert json.loads(cli("verify", "--quick", "--json"))["checked"] == 3
    assert "prompt" in cli("show", first["id"]) or "original_prompt" in cli("show", first["id"])
    cli("rm", kept["id"])
    cli("rm", second["id"])
    assert json.loads(cli("ls", "library", "--json"))["items"] == []
    assert len(json.loads(cli("ls", "workspace", "--json"))["items"]) == 1
    assert "removed 0" in cli("cleanup")


def test_paging_with_cursor(cli, tmp_path: Path) -> None:
    for n in range(5):
        cli("add", str(_png(tmp_path / f"p{n}.png", n)))
    seen, cursor = [], None
    while True:
        args = ["ls", "workspace", "--limit", "2", "--json"] + (["--cursor", cursor] if cursor else [])
        page = json.loads(cli(*args))
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["rm", "not-a-uuid"], 3, "not a valid UUID"),
        (["rm", "00000000-0000-4000-8000-000000000000"], 2, "no asset"),
        (["collections", "delete", "nope"], 2, "no collection"),
        (["add", "/nonexistent/file.png"], 2, "does not exist"),
        (["ls", "workspace", "--tag", "fox"], 3, "filter the library"),
    ],
)
def test_errors_are_one_line_and_exit_codes(cli, args, code, needle) -> None:
    output = cli(*args, code=code)
    assert needle in output and "Traceback" not in output and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, code, kind", [
    (["show", "00000000-0000-4000-8000-000000000000"], 2, "NotFoundError"),
    (["add", "/nonexistent/file.png"], 2, "NotFoundError"),
])
def test_with_json_a_failure_is_json_on_stdout_too(tmp_path: Path, args: list[str], code: int, kind: str) -> None:
    vault_path = tmp_path / "vault"
    Vault.create(vault_path, user_id=USER).close()
    result = CliRunner().invoke(main, ["--vault", str(vault_path), *args, "--json"])
    assert result.exit_code == code and result.stderr.startswith("error:"), (result.output, result.stderr)
    failure = json.loads(result.stdout)["error"]
    assert result.stdout.count("\n") == 1  # one line: a JSON Lines record too, under 'watch --json'
    assert failure["exit_code"] == code and failure["kind"] == kind and failure["message"] in result.stderr
    plain = CliRunner().invoke(main, ["--vault", str(vault_path), *args])
    assert plain.exit_code == code and plain.stdout == ""  # without --json, stdout stays empty


def test_with_json_a_usage_error_or_a_bug_is_json_on_stdout_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault_path = tmp_path / "vault"
    Vault.create(vault_path, user_id=USER).close()
    usage = CliRunner().invoke(main, ["--vault", str(vault_path), "ls", "--json", "--limit", "abc"])
    assert usage.exit_code == 2 and "Usage:" in usage.stderr
    assert json.loads(usage.stdout)["error"] == {"message": "Invalid value for '--limit': 'abc' is not a valid integer.",
                                                 "exit_code": 2, "kind": "BadParameter"}

    def a_bug(*_args: object, **_kwargs: object) -> None:  # the one fault no input can cause: a bug in the library
        raise RuntimeError("boom")

    monkeypatch.setattr(Vault, "verify", a_bug)
    crashed = CliRunner().invoke(main, ["--vault", str(vault_path), "verify", "--json"])
    assert crashed.exit_code == 1 and isinstance(crashed.exception, RuntimeError)
    assert json.loads(crashed.stdout)["error"] == {"message": "RuntimeError: boom", "exit_code": 1, "kind": "InternalError"}


def test_missing_vault_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["--vault", str(tmp_path / "none"), "ls"])
    assert result.exit_code == 2 and "no vault at" in result.output and "Traceback" not in result.output
    (tmp_path / "notes.txt").write_text("x")
    a_file = CliRunner().invoke(main, ["--vault", str(tmp_path / "notes.txt"), "ls"])
    assert a_file.exit_code == 2 and "is a file, not a vault folder" in a_file.output and "init" not in a_file.output
    # '--vault "$UNSET"' once acted on a vault in the current folder
    Vault.create(tmp_path / "here", user_id=USER).close()
    monkeypatch.chdir(tmp_path / "here")
    empty = CliRunner().invoke(main, ["--vault", "", "ls", "workspace"])
    assert empty.exit_code == 2 and "'--vault': is empty" in empty.output


def test_network_filesystem_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Mounting NFS is impossible here; the mount-table lookup is the one thing faked.
    monkeypatch.setattr(db_module, "filesystem_type", lambda path: "nfs4")
    with pytest.warns(db_module.NetworkFilesystemWarning, match="network filesystem"):
        Vault.create(tmp_path / "v").close()


def test_a_warning_is_shown_when_it_is_raised_not_when_the_command_ends(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings were kept until the command ended: a watch kept watchdog's for days (290 MiB after three moves of
    a 300-folder tree, 137 MB printed at the end). Each is now a `warning:` line at once, before what follows."""
    import warnings

    from localvault.cli import output

    Vault.create(tmp_path / "v", user_id=USER).close()
    monkeypatch.setattr(db_module, "filesystem_type", lambda path: "nfs4")
    shown: list[str] = []
    real_warning = output.warning

    def noted(message: str) -> None:
        shown.append(message)
        real_warning(message)

    monkeypatch.setattr(output, "warning", noted)
    real_open = Vault.open

    def open_then_look(*args: object, **kwargs: object) -> Vault:
        vault = real_open(*args, **kwargs)  # type: ignore[arg-type]
        assert any("network filesystem" in message for message in shown)  # already, while the command runs
        return vault

    monkeypatch.setattr(Vault, "open", open_then_look)
    with warnings.catch_warnings():
        result = CliRunner().invoke(main, ["--vault", str(tmp_path / "v"), "ls", "workspace"])
    assert result.exit_code == 0, result.output
    assert sum("network filesystem" in message for message in shown) == 1


def test_filesystem_type_reads_the_mount_table(tmp_path: Path) -> None:
    assert filesystem_type(tmp_path) not in (None, "")


def test_python_dash_m_localvault_runs_the_cli(tmp_path: Path) -> None:
    """Where the ``localvault`` script is not on PATH (a venv not activated), ``python -m localvault`` does the same."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "localvault", "--vault", str(tmp_path / "v"), "init", "--user", USER],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert USER in done.stdout and (tmp_path / "v" / "vault.db").is_file()


def test_text_in_brackets_prints_as_it_is(cli, tmp_path: Path) -> None:
    """A1111 prompts ("[red:blue:0.5]"), file names ("[1].png") and messages ("the [remote] table") are not markup."""
    named = _png(tmp_path / "[1] fox.png", 5)
    asset = json.loads(cli("add", str(named), "--prompt", "a [red] fox, [bold]sky[/bold]", "--json"))
    assert "a [red] fox, [bold]sky[/bold]" in cli("show", asset["id"])
    assert "[red]" in cli("ls", "workspace")  # (the narrow prompt column folds the rest)
    assert f"already in the workspace as {asset['id']}" in cli("add", str(named), code=4)
    (tmp_path / "vault" / "localvault.toml").write_text(f'user_id = "{USER}"\n[remote]\nbucket_url = "s3://b"\n')
    assert "the [remote] table needs database_url" in cli("sync", code=6)


def test_a_broken_remote_table_stops_only_the_sync_and_remote_set_mends_it(cli, tmp_path: Path) -> None:
    """Before: every command, local ones included, failed on it (exit 6), 'remote set' too, which its message
    named as the way out."""
    toml = tmp_path / "vault" / "localvault.toml"
    toml.write_text(f'user_id = "{USER}"\n[remote]\ndatabase_url = 5\n')
    asset = json.loads(cli("add", str(_png(tmp_path / "a.png", 1)), "--json"))
    assert asset["id"] in cli("ls", "workspace")
    assert "the [remote] table needs database_url" in cli("sync", code=6)
    status = json.loads(cli("status", "--json"))
    assert status["problem"] == "not_ready" and "the [remote] table needs database_url" in status["offline_reason"]
    assert "the [remote] table needs database_url" in cli("remote", "show", code=6)  # (not "no remote is set")
    with Vault.open(tmp_path / "vault") as vault:  # (in Python, the same way out)
        assert vault.config.remote_problem is not None
        vault.set_remote("postgresql://u@db.example/app", "s3://lib")
        assert vault.config.remote_problem is None and vault.config.remote is not None
    toml.write_text(f'user_id = "{USER}"\n[remote]\ndatabase_url = 5\n')
    cli("remote", "set", "--database-url", "postgresql://u@db.example/app", "--bucket", "s3://lib")
    assert json.loads(cli("remote", "show", "--json"))["bucket_url"] == "s3://lib"
    assert USER in toml.read_text()


def test_seed_in_other_digits_is_refused_in_one_line(cli, tmp_path: Path) -> None:
    output = cli("add", str(_png(tmp_path / "s.png", 6)), "--seed", "²", code=3)  # isdigit() is true, int() refuses
    assert "is not a whole number" in output and "Traceback" not in output
    assert "out of range" in cli("add", str(_png(tmp_path / "s.png", 6)), "--seed", "-5", code=3)


def test_cleanup_reports_every_asset_it_removes(cli, tmp_path: Path) -> None:
    ids = [json.loads(cli("add", str(_png(tmp_path / f"c{n}.png", 10 + n)), "--json"))["id"] for n in range(3)]
    with Vault.open(tmp_path / "vault") as vault:
        for asset_id in ids:
            vault.workspace.expire(asset_id)
        with vault.db.write() as conn:  # the last cleanup long ago: opening the vault would clean up first
            vault.db.set_meta(conn, "last_cleanup", "2000-01-01T00:00:00.000Z")
    assert "removed 3 expired workspace assets" in cli("cleanup")


def test_ls_workspace_shows_when_each_asset_expires(cli, tmp_path: Path) -> None:
    """An expired asset stays listed until the next cleanup (up to an hour), and looked as live as the others."""
    kept, gone = (json.loads(cli("add", str(_png(tmp_path / f"e{n}.png", 20 + n)), "--json"))["id"] for n in range(2))
    with Vault.open(tmp_path / "vault") as vault:
        vault.workspace.expire(gone)
        expires = vault.workspace.get(kept).expires_at.strftime("%Y-%m-%d %H:%M")
    table = cli("ls", "workspace")
    assert "expires" in table and expires in table and "expired" in table
    assert "removed 1 expired workspace asset\n" in cli("cleanup")


def test_export_to_a_folder_path_that_does_not_exist_yet(cli, tmp_path: Path) -> None:
    source = _png(tmp_path / "e.png", 20)
    asset = json.loads(cli("add", str(source), "--json"))
    assert "wrote" in cli("export", asset["id"], f"{tmp_path}/out/")
    assert (tmp_path / "out" / f"{asset['id']}.png").read_bytes() == source.read_bytes()


def test_commands_take_an_ids_first_characters(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """show, save, update, export and rm take the first characters of an id, as 'ls' shows it; assets whose ids
    start alike ask for more (exit 3); none, exit 2 (not found)."""
    made = iter(range(1, 200))  # every new id starts with abcdef, then two hex digits of its own
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(f"abcdef{next(made):02x}-1234-4000-8000-00000000000a"))
    first, second = (json.loads(cli("add", str(_png(tmp_path / f"{n}.png", n)), "--json"))["id"] for n in (1, 2))
    assert json.loads(cli("show", first[:8], "--json"))["id"] == first
    kept = json.loads(cli("save", first[:8], "--title", "Fox", "--json"))
    updated = json.loads(cli("update", kept["id"][:8], "--title", "Fox 2", "--json"))
    assert (updated["id"], updated["title"]) == (kept["id"], "Fox 2")
    assert "wrote" in cli("export", kept["id"][:8], str(tmp_path / "out") + "/")
    assert (tmp_path / "out" / f"{kept['id']}.png").exists()
    assert json.loads(cli("rm", second[:8], "--json")) == {"deleted": second, "from": "workspace"}
    several = cli("rm", "abcdef", code=3)
    assert "several assets" in several and first in several and kept["id"] in several
    assert "no asset id in this vault starts with 'ffffff'" in cli("show", "ffffff", code=2)
    assert json.loads(cli("ls", "library", "--json"))["items"][0]["title"] == "Fox 2"


def test_every_command_that_changes_something_speaks_json(cli, tmp_path: Path) -> None:
    asset = json.loads(cli("add", str(_png(tmp_path / "j.png", 30)), "--json"))
    kept = json.loads(cli("save", asset["id"], "--title", "Fox", "--json"))
    cleared = json.loads(cli("update", kept["id"], "--no-title", "--json"))
    assert cleared["title"] is None
    assert "not both" in cli("update", kept["id"], "--no-title", "--title", "x", code=3)
    json.loads(cli("collections", "create", "Foxes", "--json"))
    described = json.loads(cli("collections", "describe", "Foxes", "red ones", "--json"))
    assert described["description"] == "red ones"
    assert json.loads(cli("collections", "describe", "Foxes", "--json"))["description"] is None
    assert json.loads(cli("collections", "delete", "Foxes", "--json")) == {"deleted": "Foxes"}
    written = json.loads(cli("export", kept["id"], f"{tmp_path}/out/", "--json"))["written"]
    assert Path(written).read_bytes() == (tmp_path / "j.png").read_bytes()
    assert json.loads(cli("rm", kept["id"], "--json")) == {"deleted": kept["id"], "from": "library"}
    assert json.loads(cli("cleanup", "--json")) == {"assets_removed": 0, "files_removed": 0, "complete": True}
    stored = json.loads(cli("remote", "set", "--database-url", "postgresql://u:pw@db.example:5432/app", "--bucket",
                            "s3://lib", "--key", "AKIAEXAMPLE", "--secret", "not-shown", "--json"))
    assert stored["database_url"] == "postgresql://u:***@db.example:5432/app" and stored["storage_options"] == {
        "key": "AKIAEXAMPLE", "secret": "***"}


def test_file_names_that_are_not_utf8_print_without_a_traceback(tmp_path: Path) -> None:
    """Under a UTF-8 locale stdout is strict: the import (or export) was done, then its report raised
    UnicodeEncodeError. JSON stays valid UTF-8, and its escapes give back the file name's bytes."""
    import os
    import subprocess
    import sys

    from conftest import write_media

    source = tmp_path / "src"
    write_media(source, seed=1, name="ok.png")
    odd = os.fsencode(source) + b"/bad\xff.png"
    os.rename(os.fsencode(write_media(source, seed=2, name="tmp.png")), odd)
    Vault.create(tmp_path / "v").close()
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "200"}

    def run(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "localvault.cli", "--vault", str(tmp_path / "v"), *args],
                              capture_output=True, env=env, timeout=120)

    as_json = run("import", "--json", str(source))
    assert as_json.returncode == 0 and b"Traceback" not in as_json.stderr, as_json.stderr
    report = json.loads(as_json.stdout.decode("utf-8"))  # strict UTF-8: no raw \xff byte
    odd_ones = [item for item in report["imported"] if os.fsencode(item["source"]) == odd]
    assert len(report["imported"]) == 2 and len(odd_ones) == 1
    asset_id = odd_ones[0]["asset_id"]
    exported = run("export", asset_id, os.fsencode(tmp_path) + b"/out\xff/")
    assert exported.returncode == 0 and b"Traceback" not in exported.stderr, exported.stderr
    assert b"\\udcff" in exported.stdout and os.path.isdir(os.fsencode(tmp_path) + b"/out\xff")


def test_add_of_a_named_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Reading its metadata opened the FIFO for reading, which waits for a writer: 'add' hung for ever."""
    import os
    import subprocess
    import sys

    from localvault import StorageError, metadata

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    Vault.create(tmp_path / "v").close()
    result = subprocess.run([sys.executable, "-m", "localvault.cli", "--vault", str(tmp_path / "v"), "add", str(fifo)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "is not a file" in result.stderr, result.stderr
    with pytest.raises(StorageError, match="not a regular file"):
        metadata.read(fifo)


def test_printed_paths_are_not_folded_when_piped(tmp_path: Path) -> None:
    """OUT=$(localvault export ID DIR/) captured 'wrote \\n/…': lines were folded at 80 columns."""
    import os
    import subprocess
    import sys

    from conftest import write_media

    root = tmp_path / ("a-long-folder-name-" * 4) / "v"
    with Vault.create(root) as vault:
        asset = vault.workspace.add(write_media(tmp_path / "src", seed=1))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "localvault.cli", "--vault", str(root), "export", asset.id,
                          f"{root.parent}/exported/"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert len(line) > 80 and Path(line.removeprefix("wrote ")).is_file()


def test_status_without_a_remote_says_so_not_offline(cli) -> None:
    text = cli("status")
    assert "no remote is set" in text and "offline" not in text
    assert json.loads(cli("status", "--json"))["problem"] is None


def test_watch_still_shows_the_warning_of_a_file_set_aside(capsys: pytest.CaptureFixture[str]) -> None:
    """`watch` hides the library's warnings (its events show every problem with a file), but a file the vault
    moves to recovered/ has no event: before, the watch moved it without a word."""
    import logging

    from localvault.cli import output

    output.show_library_logs(False, still_from=("localvault._recovered",))
    try:
        logging.getLogger("localvault._recovered").warning("workspace-temp/u/j/1.png had no row; moved")
        logging.getLogger("localvault.importer").warning("refused x.png: shown by its watch event instead")
        err = capsys.readouterr().err
        assert "had no row; moved" in err and "x.png" not in err
    finally:
        output.show_library_logs(False)


_READ_ONLY_MEDIA_SCRIPT = """
import json, subprocess, sys
from pathlib import Path
from click.testing import CliRunner
from PIL import Image
from localvault import Vault
from localvault.cli import main

mount, work, user = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
Image.new("RGB", (8, 8), (1, 2, 3)).save(work / "a.png")
with Vault.create(mount / "vault", user_id=user) as vault:
    kept = vault.library.save(vault.workspace.add(work / "a.png").id, title="Fox")
# A snapshot of a vault in use: its -wal (with a second asset only there) and -shm are copied too.
import shutil
Image.new("RGB", (8, 8), (4, 5, 6)).save(work / "b.png")
with Vault.open(mount / "vault") as writer:
    writer.workspace.add(work / "b.png")
    shutil.copytree(mount / "vault", mount / "snapshot")
subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
root = str(mount / "vault")
out = {}
for name, args in {"ls": ["ls", "library", "--json"], "show": ["show", kept.id, "--json"],
                   "verify": ["verify", "--json"], "export": ["export", kept.id, str(work / "out.png"), "--json"],
                   "status": ["status", "--offline", "--json"], "save": ["collections", "create", "X", "--json"]}.items():
    result = CliRunner().invoke(main, ["--vault", root, *args])
    out[name] = [result.exit_code, result.stdout, result.stderr]
with Vault.open(root, readonly=True) as vault:
    out["api_title"] = vault.library.get(kept.id).title
snapshot = mount / "snapshot"
out["snapshot_files"] = sorted(p.name for p in snapshot.iterdir())
with Vault.open(snapshot, readonly=True) as vault:
    out["snapshot_count"] = vault.workspace.count()
result = CliRunner().invoke(main, ["--vault", str(snapshot), "ls", "workspace", "--json"])
out["snapshot_ls"] = [result.exit_code, len(json.loads(result.stdout)["items"]) if result.exit_code == 0 else result.stderr]
out["exported"] = (work / "out.png").read_bytes() == (work / "a.png").read_bytes()
print(json.dumps(out))
"""


def test_a_vault_on_a_read_only_filesystem_can_be_read(tmp_path: Path) -> None:
    """A backup disk or a snapshot: SQLite cannot make the -shm file a reader of a WAL database needs, so
    every command failed ('cannot open … for writing'). Commands that only read now open it read-only
    (immutable); one that writes says the filesystem is read-only. The filesystem is a real tmpfs mounted
    read-only in a private mount namespace (unshare -m, as root)."""
    import subprocess
    import sys

    (tmp_path / "mnt").mkdir()
    script = tmp_path / "script.py"
    script.write_text(_READ_ONLY_MEDIA_SCRIPT)
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, str(script),
                           str(tmp_path / "mnt"), str(tmp_path), USER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"needs root (CAP_SYS_ADMIN) for unshare -m and mount: {done.stderr[-2000:]}"
    out = json.loads(done.stdout.splitlines()[-1])
    for name in ("ls", "show", "verify", "export", "status"):
        assert out[name][0] == 0, (name, out[name])
    assert json.loads(out["ls"][1])["items"][0]["title"] == "Fox" and json.loads(out["verify"][1])["clean"]
    assert out["exported"] and out["api_title"] == "Fox"
    code, _stdout, stderr = out["save"]
    assert code == 8 and "read-only filesystem: mount it writable" in stderr, out["save"]
    # the snapshot: read through its -shm, its -wal's asset included (it was once refused as 'holding changes')
    assert {"vault.db-wal", "vault.db-shm"} <= set(out["snapshot_files"])
    assert out["snapshot_count"] == 2 and out["snapshot_ls"] == [0, 2], out


def test_import_from_an_apps_thread(cli, tmp_path: Path) -> None:
    """An app may run the CLI in a thread of its own: Python lets only the main thread set signal handlers."""
    import threading

    out = tmp_path / "out"
    out.mkdir()
    _png(out / "a.png", 3)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(cli("import", str(out), "--json")))
    thread.start()
    thread.join()
    assert len(results) == 1 and len(json.loads(results[0])["imported"]) == 1


@pytest.mark.parametrize("columns", ["60", "80"])
def test_tables_show_ids_unbroken_however_narrow_the_terminal(tmp_path: Path, columns: str) -> None:
    """An id is copied from a table into the next command: it never breaks over lines (the other columns fold).
    Below 120 columns it is its first 8 digits, which every command takes."""
    runner = CliRunner(env={"COLUMNS": columns})
    vault = ["--vault", str(tmp_path / "vault")]
    assert runner.invoke(main, [*vault, "init", "--user", USER]).exit_code == 0
    added = json.loads(runner.invoke(main, [*vault, "add", str(_png(tmp_path / "a.png", 3)), "--prompt", "fox " * 30,
                                            "--json"]).output)
    kept = json.loads(runner.invoke(main, [*vault, "save", added["id"], "--title", "a long title " * 3, "--tag",
                                           "night sky", "--json"]).output)
    collection = json.loads(runner.invoke(main, [*vault, "collections", "create", "Foxes of the north",
                                                 "--description", "red " * 20, "--json"]).output)
    assert added["id"][:8] in runner.invoke(main, [*vault, "ls", "workspace"]).output
    assert kept["id"][:8] in runner.invoke(main, [*vault, "ls"]).output
    assert collection["id"] in runner.invoke(main, [*vault, "collections", "ls"]).output  # (named by name or id)
    shown = json.loads(runner.invoke(main, [*vault, "show", kept["id"][:8], "--json"]).output)
    assert shown["id"] == kept["id"]
    wide = CliRunner(env={"COLUMNS": "160"})
    assert kept["id"] in wide.invoke(main, [*vault, "ls"]).output


def test_show_names_the_collection_beside_its_id(cli, tmp_path: Path) -> None:
    """show printed the collection's id alone (a rig user's journey)."""
    collection = json.loads(cli("collections", "create", "Foxes of the north", "--json"))
    added = json.loads(cli("add", str(_png(tmp_path / "a.png", 9)), "--json"))
    kept = json.loads(cli("save", added["id"], "--collection", "Foxes of the north", "--json"))
    assert f"collection_id: {collection['id']} (Foxes of the north)" in cli("show", kept["id"])
    # save and update print what they set, not only the id, type and prompt
    updated = cli("update", kept["id"], "--title", "Red fox", "--add-tag", "snow", "--favorite")
    assert updated.startswith(kept["id"]) and "Red fox" in updated and "tags: snow" in updated and "★" in updated
    assert "in Foxes of the north" in updated
    renamed = cli("collections", "rename", "Foxes of the north", "Foxes")
    assert renamed.strip() == f"{collection['id']}  Foxes"
    cli("collections", "create", "Birds")
    assert "in Birds" in cli("update", kept["id"], "--move-to", "Birds")  # (a sync user's journey: it said nothing)
    assert " in " not in cli("update", kept["id"], "--no-collection")


def test_tags_holding_a_comma_are_shown_quoted(cli, tmp_path: Path) -> None:
    added = json.loads(cli("add", str(_png(tmp_path / "a.png", 4)), "--json"))
    kept = json.loads(cli("save", added["id"], "--tag", "a,b", "--tag", "owl", "--json"))
    assert '"a,b",' in cli("ls")  # (the cell may fold after the comma)
    assert 'tags: "a,b", owl' in cli("show", kept["id"])


def test_show_sums_up_a_long_setting_and_leaves_out_empty_fields(cli, tmp_path: Path) -> None:
    """A ComfyUI graph (hundreds of lines) does not bury the prompt and seed: 'show --json' prints it whole."""
    graph = {str(n): {"class_type": "KSampler", "inputs": {"seed": n, "steps": 20}} for n in range(40)}
    settings = json.dumps({"steps": 20, "comfyui_prompt": graph})
    added = json.loads(cli("add", str(_png(tmp_path / "a.png", 6)), "--prompt", "a fox", "--settings", settings,
                           "--json"))
    shown = cli("show", added["id"])
    assert "original_prompt: a fox" in shown and "  steps: 20" in shown
    assert "comfyui_prompt: (dict of 40 entries" in shown and "KSampler" not in shown
    assert ": None" not in shown
    assert json.loads(cli("show", added["id"], "--json"))["generation_settings"]["comfyui_prompt"] == graph


def test_a_refused_file_is_named_once_on_its_line(cli, tmp_path: Path) -> None:
    rig = tmp_path / "rig"
    rig.mkdir()
    (rig / "empty.png").write_bytes(b"")
    printed = cli("import", str(rig), "--no-progress")
    (line,) = [line for line in printed.splitlines() if "refused" in line and "empty.png" in line]
    assert line.count("empty.png") == 1 and "is empty" in line


def test_an_import_says_how_many_files_it_did_not_look_at(cli, tmp_path: Path) -> None:
    """A rig's .webm (ComfyUI's SaveVideo), its workflow_api.json and a licence were counted only in --json: the
    text said "1 imported, 0 skipped as duplicates, 0 refused" (a rig user's journey)."""
    rig = tmp_path / "rig"
    rig.mkdir()
    _png(rig / "a.png", 1)
    for name in ("clip.webm", "workflow_api.json", "LICENSE.txt"):
        (rig / name).write_bytes(b"x")
    printed = cli("import", str(rig), "--no-progress")
    assert "1 imported" in printed and "3 other file(s) not looked at" in printed
    only_images = tmp_path / "only"
    only_images.mkdir()
    _png(only_images / "b.png", 2)
    assert "not looked at" not in cli("import", str(only_images), "--no-progress")
    one_file = cli("import", str(rig / "a.png"), code=3)
    assert "is not a folder" in one_file and "localvault add" in one_file


def test_a_narrow_terminal_lists_ids_by_their_first_digits_and_an_empty_list_says_so(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 80 columns the whole id left 44 to the six other columns: a date folded over five lines (a rig user's
    journey). A short id is one every command takes; a pipe still gets whole ids."""
    from localvault.cli import output

    assert cli("ls", "workspace").strip() == "the workspace is empty"
    added = json.loads(cli("add", str(_png(tmp_path / "a.png", 1)), "--prompt", "a red fox", "--json"))
    assert added["id"] in cli("ls", "workspace")  # (no terminal: whole ids)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(output.console, "width", 80)
    narrow = cli("ls", "workspace")
    assert added["id"][:8] in narrow and added["id"] not in narrow
    row = next(line for line in narrow.splitlines() if added["id"][:8] in line)
    assert "a red fox" in row and time.strftime("%Y-%m-%d") in row  # one line, the date whole
    assert json.loads(cli("show", added["id"][:8], "--json"))["id"] == added["id"]
    assert cli("ls", "--search", "nothing-like-it").strip() == "no library asset matches"


def test_times_the_cli_prints_are_to_the_millisecond(cli, tmp_path: Path) -> None:
    """As docs/api.md says (``2026-11-27T19:20:00.000Z``), in --json and in show's text. Before: six digits
    (``.443000Z``), pydantic's form of the same moment."""
    asset = json.loads(cli("add", str(_png(tmp_path / "a.png", 1)), "--json"))
    millis = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(millis, asset["created_at"]) and re.fullmatch(millis, asset["expires_at"])
    shown = json.loads(cli("show", asset["id"], "--json"))
    assert shown["created_at"] == asset["created_at"]
    assert re.search(rf"created_at: {millis}\n", cli("show", asset["id"]))
    listed = json.loads(cli("ls", "--json"))
    items = listed["items"] if isinstance(listed, dict) else listed
    assert all(re.fullmatch(millis, item["created_at"]) for item in items)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_closed_pipe_ends_the_output_quietly(cli, tmp_path: Path, as_json: bool) -> None:
    """`localvault ls --json | head -1`: the reader goes, the rest is not wanted. Before, under --json, the
    closed pipe was reported as a failure ("error: Broken pipe") on stderr."""
    import os
    import subprocess
    import sys

    for n in range(40):
        cli("add", str(_png(tmp_path / f"{n}.png", n)))
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first write
    try:
        done = subprocess.run([sys.executable, "-m", "localvault.cli", "--vault", str(tmp_path / "vault"), "ls",
                               "--limit", "1000", *(["--json"] if as_json else [])],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 1 and done.stderr == ""


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_json_output_that_cannot_be_written_is_one_error_line_not_a_traceback(cli, tmp_path: Path,
                                                                               stdout: str) -> None:
    """`ls --json > /dev/full` (or with stdout closed, `>&-`). Before: two tracebacks (the JSON error was written
    to the stdout that had just failed), exit 1. Now: the error on stderr, exit 8, as without --json."""
    import os
    import subprocess
    import sys

    cli("add", str(_png(tmp_path / "a.png", 1)))
    command = [sys.executable, "-m", "localvault.cli", "--vault", str(tmp_path / "vault"), "ls", "--json"]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    else:
        done = subprocess.run(command, preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 8 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: No space left on device" if stdout == "full" else "error: standard output is closed"]


def test_init_with_an_empty_user_id_is_refused(tmp_path: Path) -> None:
    """`init --user "$UNSET"`: before, a vault for a new random user, without a word."""
    result = CliRunner().invoke(main, ["init", str(tmp_path / "v"), "--user", ""])
    assert result.exit_code == 3 and "not a valid UUID" in result.output, result.output
    assert not (tmp_path / "v").exists()


def test_a_table_written_to_a_pipe_keeps_each_row_on_one_line(cli, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`localvault ls | grep 2026-11-28`: before, rich folded every cell to 80 columns when stdout was no terminal
    ("2026-1" / "1-28"), so a grep for a date or a word of the prompt found nothing."""
    monkeypatch.delenv("COLUMNS", raising=False)
    prompt = "a lighthouse on a cliff at dusk, waves crashing, cinematic lighting, volumetric fog, 35mm"
    asset = json.loads(cli("add", str(_png(tmp_path / "a.png", 1)), "--prompt", prompt, "--json"))
    (row,) = [line for line in cli("ls", "workspace").splitlines() if asset["id"] in line]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row) and "unknown" in row and "lighthouse on a cliff" in row


def test_a_missing_collection_suggests_creating_it_only_where_an_asset_is_to_go_in(cli, tmp_path: Path) -> None:
    """Before: `collections delete Nope` (or a rename of one renamed since) also said "create it first"."""
    for command in (("collections", "delete", "Nope"), ("collections", "rename", "Nope", "Other")):
        said = cli(*command, code=2)
        assert "no collection 'Nope'" in said and "create it first" not in said and "collections ls" in said
    asset = json.loads(cli("add", str(_png(tmp_path / "a.png", 1)), "--json"))
    said = cli("save", asset["id"], "--collection", "Nope", code=2)
    assert "create it first ('localvault collections create \"Nope\"')" in said


def test_an_error_naming_a_file_with_a_line_break_is_one_line(cli, tmp_path: Path) -> None:
    """`localvault add $'bad\\n  refused other.png'`: the error printed the name raw, as two lines."""
    import subprocess
    import sys

    odd = tmp_path / "bad\n  refused other.png"
    odd.write_bytes(b"not an image")
    done = subprocess.run([sys.executable, "-m", "localvault.cli", "--vault", str(tmp_path / "vault"), "add", str(odd)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr.splitlines() == [f"error: {tmp_path}/bad\\n  refused other.png is not a JPEG, PNG, WebP or MP4 "
                                        "file (its bytes say otherwise)"], done.stderr


def test_version_names_the_schemas_this_localvault_knows() -> None:
    """Every release said 'version 0.1.0', so a user told to upgrade (exit 7) could not tell one localvault from
    another (an upgrade journey): the vault and server schemas it knows are what an upgrade changes."""
    from localvault._sqlite_migrations import schema_version
    from localvault.sync import SCHEMA_VERSION

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert f"(vault schema {schema_version()}; server schema {SCHEMA_VERSION})" in result.output


def _rm_at_a_terminal(vault_path: Path, asset_id: str, answer: bytes, *extra: str) -> tuple[int, str, str]:
    """``localvault rm`` with its stdin and stderr on a pseudo-terminal, answering ``answer`` when it asks:
    (exit code, stdout, what the terminal showed)."""
    import os
    import pty
    import select
    import subprocess
    import sys

    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-m", "localvault", "--vault", str(vault_path), "rm", asset_id,
                                  *extra], stdin=follower, stdout=subprocess.PIPE, stderr=follower)
        shown = b""
        deadline = time.monotonic() + 60
        while b"?" not in shown and child.poll() is None and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.2)[0]:
                shown += os.read(leader, 4096)
        if b"?" in shown:
            os.write(leader, answer)
        stdout, _ = child.communicate(timeout=60)
        while select.select([leader], [], [], 0.2)[0]:
            try:
                shown += os.read(leader, 4096)
            except OSError:
                break
        return child.returncode, stdout.decode(), shown.decode(errors="replace")
    finally:
        os.close(leader)
        os.close(follower)


def test_rm_of_a_library_asset_asks_at_a_terminal_and_a_no_keeps_it(tmp_path: Path) -> None:
    vault = Vault.create(tmp_path / "v", user_id=USER)
    kept = vault.library.add(_png(tmp_path / "a.png", 1), title="Fox at dawn")
    draft = vault.workspace.add(_png(tmp_path / "b.png", 2))
    vault.close()
    code, out, shown = _rm_at_a_terminal(tmp_path / "v", kept.id[:8], b"n\n")
    assert code == 0 and out == "" and '"Fox at dawn"' in shown and "server" in shown and "nothing deleted" in shown
    code, out, shown = _rm_at_a_terminal(tmp_path / "v", kept.id[:8], b"n\n", "--json")
    assert code == 0 and json.loads(out) == {"deleted": None, "from": None}  # (stdout held nothing)
    code, out, shown = _rm_at_a_terminal(tmp_path / "v", kept.id[:8], b"\x04")  # end of input at the question
    assert code == 130 and "nothing deleted" in shown
    with Vault.open(tmp_path / "v") as vault:
        assert vault.library.get(kept.id).title == "Fox at dawn"
    code, out, shown = _rm_at_a_terminal(tmp_path / "v", kept.id[:8], b"y\n")
    assert code == 0 and out.strip() == f"deleted library asset {kept.id}"
    code, out, shown = _rm_at_a_terminal(tmp_path / "v", draft.id, b"n\n")  # a workspace draft: no question
    assert code == 0 and "?" not in shown and out.strip() == f"deleted workspace asset {draft.id}"
    with Vault.open(tmp_path / "v") as vault:
        other = vault.library.add(_png(tmp_path / "c.png", 3))
    code, out, shown = _rm_at_a_terminal(tmp_path / "v", other.id, b"n\n", "--yes")
    assert code == 0 and "?" not in shown and out.strip() == f"deleted library asset {other.id}"
    with Vault.open(tmp_path / "v") as vault:
        assert vault.library.list().items == [] and vault.workspace.list().items == []
