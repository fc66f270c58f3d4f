"""The sync commands of the CLI (schema apply, remote set, sync, status) against the real servers."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from localvault import Vault
from localvault.cli import main

USER_A = "0a0a0a0a-0000-4000-8000-00000000000a"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def _image(folder: Path, n: int) -> Path:
    path = folder / f"cli{n}.png"
    Image.new("RGB", (12, 12), (n % 256, 40, (n * 7) % 256)).save(path)
    return path


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    path = tmp_path / "vault"
    Vault.create(path, user_id=USER_A).close()
    return path


def _add(vault_path: Path, folder: Path, count: int, start: int = 0) -> list[str]:
    with Vault.open(vault_path) as vault:
        return [vault.library.add(_image(folder, n), prompt=f"cli {n}", seed=n, title=f"t{n}").id
                for n in range(start, start + count)]


def _set_remote(vault_path: Path, dsn: str, s3_bucket: Any) -> Result:
    opts = s3_bucket.storage_options
    return ok(run("--vault", str(vault_path), "remote", "set", "--database-url", dsn, "--bucket", f"s3://{s3_bucket.name}",
                  "--endpoint-url", opts["client_kwargs"]["endpoint_url"], "--key", opts["key"], "--secret", opts["secret"],
                  "--region", "us-east-1"))


def _server_titles(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return {str(r[0]): r[1] for r in conn.execute("SELECT id, title FROM public.user_library")}


def test_schema_apply_twice_applies_nothing_the_second_time(pg_empty_database: str) -> None:
    first = as_json(run("schema", "apply", "--database-url", pg_empty_database, "--json"))
    assert first["flavour"] == "postgres" and first["applied"] and first["version"] == max(first["applied"])
    second = as_json(run("schema", "apply", "--database-url", pg_empty_database, "--json"))
    assert second["applied"] == [] and second["version"] == first["version"] and not second["compat_applied"]
    text = ok(run("schema", "apply", "--database-url", pg_empty_database))
    assert "already up to date" in text.stdout


def test_remote_set_writes_a_private_toml(vault_path: Path, s3_bucket: Any) -> None:
    result = _set_remote(vault_path, "postgresql://u:pw@127.0.0.1:5432/db", s3_bucket)
    assert f"s3://{s3_bucket.name}" in result.stdout
    toml = vault_path / "localvault.toml"
    assert stat.S_IMODE(os.stat(toml).st_mode) == 0o600
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    remote = tomllib.loads(toml.read_text())["remote"]
    assert remote["database_url"] == "postgresql://u:pw@127.0.0.1:5432/db"
    assert remote["bucket_url"] == f"s3://{s3_bucket.name}"
    options = remote["storage_options"]
    assert options["key"] == s3_bucket.storage_options["key"]
    assert options["client_kwargs"]["endpoint_url"] == s3_bucket.storage_options["client_kwargs"]["endpoint_url"]
    with Vault.open(vault_path) as vault:
        assert vault.config.remote is not None and vault.config.remote.bucket_url == f"s3://{s3_bucket.name}"


def test_status_dry_run_sync_json(vault_path: Path, server: str, s3_bucket: Any, tmp_path: Path) -> None:
    _set_remote(vault_path, server, s3_bucket)
    ids = _add(vault_path, tmp_path, 3)
    vault = ["--vault", str(vault_path)]

    state = as_json(run(*vault, "status", "--json"))
    assert state["online"] is True and state["offline_reason"] is None
    assert state["pending_changes"] == 3 and state["last_sync"] is None and state["rejected"] == []
    text = ok(run(*vault, "status")).stdout
    assert "online" in text and "pending changes: 3" in text and "last sync: never" in text

    dry = as_json(run(*vault, "sync", "--dry-run", "--json"))
    assert dry["dry_run"] is True and dry["rows_written"] == 3 and dry["files_uploaded"] == 3
    assert _server_titles(server) == {}
    assert as_json(run(*vault, "status", "--json"))["pending_changes"] == 3
    assert "would push 3 rows" in ok(run(*vault, "sync", "--dry-run")).stdout

    report = as_json(run(*vault, "sync", "--json"))
    assert report["dry_run"] is False and report["rows_written"] == 3 and report["files_uploaded"] == 3
    assert report["rejected"] == 0 and report["pending_changes"] == 3
    assert _server_titles(server) == {i: f"t{n}" for n, i in enumerate(ids)}
    after = as_json(run(*vault, "status", "--json"))
    assert after["pending_changes"] == 0 and after["last_sync"]

    again = ok(run(*vault, "sync"))
    assert "pushed 0 rows" in again.stdout


def test_offline_exit_code_one_line_and_status(vault_path: Path, s3_bucket: Any, tmp_path: Path) -> None:
    _set_remote(vault_path, "postgresql://nobody:pw@127.0.0.1:1/none", s3_bucket)
    _add(vault_path, tmp_path, 2)
    vault = ["--vault", str(vault_path)]
    result = run(*vault, "sync")
    assert result.exit_code == 10, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "PostgreSQL" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for flags in (["--json"], []):
        result = run(*vault, "sync", *flags)
        assert result.exit_code == 10 and "Traceback" not in result.stderr + result.stdout

    state = as_json(run(*vault, "status", "--json"))
    assert state["online"] is False and "PostgreSQL" in state["offline_reason"] and state["pending_changes"] == 2
    text = ok(run(*vault, "status")).stdout
    assert "offline:" in text and "pending changes: 2" in text
    assert "offline" in ok(run(*vault, "status", "--offline")).stdout


def test_retry_rejected(vault_path: Path, server: str, s3_bucket: Any, tmp_path: Path) -> None:
    _set_remote(vault_path, server, s3_bucket)
    ids = _add(vault_path, tmp_path, 2)
    vault = ["--vault", str(vault_path)]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.user_library ADD CONSTRAINT short_title CHECK (length(title) <= 20)")
    with Vault.open(vault_path) as v:
        v.library.update(ids[1], title="x" * 40)

    result = ok(run(*vault, "sync"))
    assert "1 refused" in result.stdout and "localvault status" in result.stderr
    state = as_json(run(*vault, "status", "--json"))
    assert [r["row_id"] for r in state["rejected"]] == [ids[1]]
    assert state["rejected"][0]["sqlstate"] == "23514" and "short_title" in state["rejected"][0]["message"]
    assert state["pending_changes"] == 0
    text = ok(run(*vault, "status")).stdout
    assert f"refused user_library {ids[1]}" in text and "--retry-rejected" in text

    # Without the flag nothing is resent; after the fix, --retry-rejected sends it.
    assert as_json(run(*vault, "sync", "--json"))["rows_written"] == 0
    with Vault.open(vault_path) as v:
        v.library.update(ids[1], title="short")
    report = as_json(run(*vault, "sync", "--retry-rejected", "--json"))
    assert report["rejected"] == 0 and report["rows_written"] == 1
    assert as_json(run(*vault, "status", "--json"))["rejected"] == []
    assert _server_titles(server) == {ids[0]: "t0", ids[1]: "short"}
