"""The sync commands of the CLI (schema apply, remote set, sync, status) against the real servers."""

from __future__ import annotations

import json
import math
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
from localvault.sync.bucket import Bucket

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


def test_remote_set_with_any_storable_text_writes_toml_that_reads_back(vault_path: Path) -> None:
    """A non-ASCII option key (written bare, which TOML forbids) and a DEL character (left raw) made a
    localvault.toml that no later command could read, 'remote set' included."""
    url = "postgresql://u:p@h/db?application_name=a\x7fb"
    # (gs://: options s3fs would refuse by name; any text or number round-trips through localvault.toml)
    ok(run("--vault", str(vault_path), "remote", "set", "--database-url", url, "--bucket", "gs://lib",
           "--option", "région=1", "--option", 'tête={"clé": "\\u00e9"}', "--option", "ratio=NaN"))
    with Vault.open(vault_path) as vault:
        assert vault.config.remote is not None
        assert vault.config.remote.database_url == url
        options = dict(vault.config.remote.storage_options)
        assert math.isnan(options.pop("ratio"))  # (NaN is not equal to itself: once refused as not reading back)
        assert options == {"région": 1, "tête": {"clé": "é"}}
    assert "gs://lib" in ok(run("--vault", str(vault_path), "remote", "show")).stdout


def test_remote_set_refuses_an_option_toml_cannot_hold_and_keeps_the_settings(vault_path: Path) -> None:
    ok(run("--vault", str(vault_path), "remote", "set", "--database-url", "postgresql://u:p@h/db", "--bucket", "s3://lib"))
    result = run("--vault", str(vault_path), "remote", "set", "--database-url", "postgresql://u:p@h/db2",
                 "--bucket", "s3://lib2", "--option", "max_concurrency=null")
    assert result.exit_code == 3 and "TOML" in result.stderr, (result.exit_code, result.stderr)
    with Vault.open(vault_path) as vault:
        assert vault.config.remote is not None and vault.config.remote.bucket_url == "s3://lib"


@pytest.mark.parametrize("option, words", [
    ("endpoint=http://127.0.0.1:9000", ("takes no storage option 'endpoint'", "endpoint_url")),
    ('config_kwargs={"connect_timeout": "x"}', ("connect_timeout must be a positive number",)),
    ('config_kwargs={"conect_timeout": 5}', ("botocore cannot use", "conect_timeout")),
    ('config_kwargs=5', ("config_kwargs must be a table",)),
])
def test_remote_set_refuses_s3_options_the_client_cannot_use(vault_path: Path, option: str,
                                                              words: tuple[str, ...]) -> None:
    """A misspelt option would be ignored, a value of the wrong type would fail as if the store were offline."""
    result = run("--vault", str(vault_path), "remote", "set", "--database-url", "postgresql://u:p@h/db",
                 "--bucket", "s3://lib", "--option", option)
    assert result.exit_code == 3 and all(w in result.stderr for w in words), (result.exit_code, result.stderr)
    with Vault.open(vault_path) as vault:
        assert vault.config.remote is None


def test_remote_set_takes_aiobotocores_own_config_kwargs(vault_path: Path) -> None:
    """s3fs makes an aiobotocore AioConfig of config_kwargs: its aiohttp settings are not botocore's, and pass."""
    option = 'config_kwargs={"connector_args": {"keepalive_timeout": 30}, "connect_timeout": 5}'
    ok(run("--vault", str(vault_path), "remote", "set", "--database-url", "postgresql://u:p@h/db",
           "--bucket", "s3://lib", "--option", option))


def test_a_name_stored_before_the_check_existed_does_not_stop_a_sync(vault_path: Path, server: str,
                                                                      s3_bucket: Any, tmp_path: Path) -> None:
    """s3fs ignored an option name it does not take; a remote stored with one keeps syncing (remote set would
    refuse it now), and says so: a misspelt 'endpoint' sent the sync to AWS, 'offline' for ever, without a word
    (an upgrade journey)."""
    _set_remote(vault_path, server, s3_bucket)
    ids = _add(vault_path, tmp_path, 1)
    toml = vault_path / "localvault.toml"
    text = toml.read_text()
    assert "[remote.storage_options]\n" in text
    toml.write_text(text.replace("[remote.storage_options]\n", '[remote.storage_options]\nregion_name = "us-east-1"\n'))
    synced = ok(run("--vault", str(vault_path), "sync"))
    assert "s3fs takes no storage option 'region_name'" in synced.stderr and "remote set" in synced.stderr
    assert set(_server_titles(server)) == set(ids)
    assert as_json(run("--vault", str(vault_path), "status", "--json"))["online"] is True


def test_settings_stored_by_hand_that_the_client_cannot_use_are_not_offline(vault_path: Path, server: str,
                                                                             s3_bucket: Any, tmp_path: Path) -> None:
    """localvault.toml edited by hand (not checked on load): a proxy given as a number fails inside botocore's
    HTTP layer, which is a setting to fix, not a store to wait for (exit 11, not 10)."""
    _set_remote(vault_path, server, s3_bucket)
    _add(vault_path, tmp_path, 1)
    toml = vault_path / "localvault.toml"
    text = toml.read_text()
    assert "[remote.storage_options.config_kwargs]" not in text
    toml.write_text(text + '\n[remote.storage_options.config_kwargs.proxies]\nhttp = 5\n')
    state = as_json(run("--vault", str(vault_path), "status", "--json"))
    assert state["problem"] == "not_ready" and "cannot be used with these settings" in state["offline_reason"]
    result = run("--vault", str(vault_path), "sync")
    assert result.exit_code == 11 and "remote set" in result.stderr, (result.exit_code, result.stderr)


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

    ok(run(*vault, "rm", ids[0]))
    one_less = ok(run(*vault, "sync")).stdout
    assert "deleted 1; uploaded 0 files" in one_less and "1 object of deleted rows gone from the bucket" in one_less

    ok(run(*vault, "update", ids[1], "--title", "edited here"))
    with psycopg.connect(server, autocommit=True) as conn:  # and later on the web
        conn.execute("UPDATE public.user_library SET title = 'web', updated_at = now() + interval '1 hour'"
                     " WHERE id = %s", (ids[1],))
    kept = ok(run(*vault, "sync")).stdout
    assert "1 kept newer on server" in kept and f"kept newer on server: library {ids[1]};" in kept


def test_a_clock_far_from_the_servers_is_measured_and_warned_of(vault_path: Path, server: str, s3_bucket: Any,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Last writer wins compares the machines' clocks: sync and status measure this one against the server's."""
    from localvault.sync import server_checks

    _set_remote(vault_path, server, s3_bucket)
    _add(vault_path, tmp_path, 1)
    vault = ["--vault", str(vault_path)]
    in_step = ok(run(*vault, "status"))  # the suite's server runs on this machine: the same clock
    assert abs(as_json(run(*vault, "status", "--json"))["clock_offset_seconds"]) < 1
    assert "clock" not in in_step.stderr

    # A rig's clock three hours fast (a fault this machine cannot cause: the server shares its clock).
    real = server_checks.local_clock
    monkeypatch.setattr(server_checks, "local_clock", lambda: real() + 3 * 3600)
    pushed = run(*vault, "sync", "--json")
    report = as_json(pushed)
    assert report["rows_written"] == 1 and abs(report["clock_offset_seconds"] - 3 * 3600) < 1
    assert "clock is 3 h ahead" in pushed.stderr  # (stdout stays JSON)
    state = as_json(run(*vault, "status", "--json"))
    assert abs(state["clock_offset_seconds"] - 3 * 3600) < 1
    for result in (ok(run(*vault, "sync")), ok(run(*vault, "status"))):
        assert "this machine's clock is 3 h ahead of the server's" in result.stderr, result.stderr
        assert "beats edits of the same entry made elsewhere up to 3 h after it" in result.stderr

    monkeypatch.setattr(server_checks, "local_clock", lambda: real() - 90)  # within the warning's margin
    quiet = ok(run(*vault, "sync"))
    assert "clock" not in quiet.stderr
    monkeypatch.setattr(server_checks, "local_clock", lambda: real() - 2 * 86400 - 5 * 3600)
    assert "2 days 5 h behind the server's" in ok(run(*vault, "sync")).stderr


def test_the_clock_warning_names_the_gap_and_its_effect() -> None:
    from localvault.sync import clock_warning

    assert clock_warning(None) is None and clock_warning(119) is None and clock_warning(-119) is None
    ahead = clock_warning(130)
    assert ahead is not None and "2 min 10 s ahead of" in ahead and "beats edits" in ahead and "NTP" in ahead
    behind = clock_warning(-86400)
    assert behind is not None and "1 day behind" in behind and "loses to edits" in behind
    assert "1 h 1 min ahead" in (clock_warning(3660.4) or "") and "3 days ahead" in (clock_warning(3 * 86400 + 20) or "")


def test_offline_exit_code_one_line_and_status(vault_path: Path, s3_bucket: Any, tmp_path: Path) -> None:
    _set_remote(vault_path, "postgresql://nobody:pw@127.0.0.1:1/none", s3_bucket)
    _add(vault_path, tmp_path, 2)
    vault = ["--vault", str(vault_path)]
    result = run(*vault, "sync")
    assert result.exit_code == 10, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "PostgreSQL" in lines[0], result.stderr
    assert "nothing was lost: sync again once it can be reached" in lines[0]  # what to do, not only what failed
    assert "Traceback" not in result.stderr + result.stdout
    result = run(*vault, "sync", "--json")  # a script reading stdout learns of the failure there too
    assert result.exit_code == 10 and "Traceback" not in result.stderr + result.stdout
    failure = json.loads(result.stdout)["error"]
    assert failure["exit_code"] == 10 and failure["kind"] == "OfflineError" and "PostgreSQL" in failure["message"]

    state = as_json(run(*vault, "status", "--json"))
    assert state["online"] is False and "PostgreSQL" in state["offline_reason"] and state["pending_changes"] == 2
    text = ok(run(*vault, "status")).stdout
    assert "offline:" in text and "pending changes: 2" in text
    unchecked = ok(run(*vault, "status", "--offline")).stdout
    assert "not checked (--offline)" in unchecked and "no remote is set" not in unchecked
    assert as_json(run(*vault, "status", "--offline", "--json"))["offline_reason"] == "not checked (--offline)"


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


# ----------------------------------------------- settings that cannot work


@pytest.mark.parametrize("options", [["--key", "AK", "--option", "password=S3cr3t"],
                                     ["--option", "username=AK", "--secret", "S3cr3t"],
                                     ["--key", "AK", "--option", 'client_kwargs={"aws_secret_access_key": "S3cr3t"}']],
                         ids=["key+password", "username+secret", "key+client_kwargs"])
def test_remote_set_takes_a_key_and_secret_under_any_name_s3fs_takes(vault_path: Path, options: list[str]) -> None:
    """s3fs takes username/password for key/secret, and botocore its own names in client_kwargs: a pair so
    given is whole, and must not be refused as half of one."""
    result = run("--vault", str(vault_path), "remote", "set", "--database-url", "postgresql://u@h/db", "--bucket",
                 "s3://lib", *options)
    assert result.exit_code == 0, result.stderr
    with Vault.open(vault_path) as vault:
        assert vault.config.remote is not None


@pytest.mark.parametrize(("args", "needle"), [
    (["--bucket", "user-library"], "has no scheme: give a URL such as s3://user-library"),
    (["--bucket", "s3://"], "names no bucket"),
    # (a review: kept as given, then each sync made a bucket in whatever folder it ran in)
    (["--bucket", "file://./bucket"], "names a relative folder: give it whole, such as file:///"),
    (["--bucket", "./bucket"], "is a relative folder: give it whole, such as file:///"),
    (["--bucket", "nosuchproto://x"], "not one fsspec knows"),
    # (a sync user's journey: endpoint and bucket pasted as one URL passed, 'status' said online, sync failed)
    (["--bucket", "http://127.0.0.1:9000/user-library"],
     "is a web address, which a sync cannot list or delete from; for an S3-compatible store (Supabase Storage, MinIO, "
     "R2…) give the bucket and its endpoint apart: --bucket s3://user-library --endpoint-url http://127.0.0.1:9000"),
    (["--bucket", "https://abc.supabase.co/storage/v1/s3"],
     "--bucket s3://<bucket name> --endpoint-url https://abc.supabase.co/storage/v1/s3"),
    (["--bucket", "http://u:S3cr3t@127.0.0.1:9000/lib"], "--endpoint-url http://u:***@127.0.0.1:9000"),
    (["--bucket", "s3:/user-library"], "has one slash after s3:; did you mean s3://user-library?"),
    (["--bucket", "file:/srv/bucket"], "did you mean file:///srv/bucket?"),
    (["--bucket", "s3://lib", "--endpoint-url", "minio.lan:9000"], "must start with http:// or https://"),
    (["--database-url", "mysql://u:pw@h/db"], "must start with postgresql://"),
    (["--database-url", "postgresql://u:S3cr3t pass@h/db"], "percent-encode"),
    (["--database-url", "postgresql://u:p@ss/w0rd@h/db"], "percent-encode"),
    # (before, these were kept, and every sync said "offline: sync again once it can be reached", exit 10)
    (["--database-url", "postgresql://u:S3cr3t@127.0.0.1:99999/db"], "port is not one from 1 to 65535"),
    (["--database-url", "postgresql://u:S3cr3t@h/db?port=99999"], "port is not one from 1 to 65535"),
    (["--database-url", "host=h port=99999 password=S3cr3t"], "port is not one from 1 to 65535"),
    (["--database-url", "postgresql://u:S3cr3t@h/db?sslmode=bogus"], "sslmode='bogus' is not one PostgreSQL knows"),
    (["--database-url", "host=h sslmode=bogus password=S3cr3t"], "sslmode='bogus' is not one PostgreSQL knows"),
    (["--database-url", "postgresql://u:S3cr3t@h/db\nx"], "a line break"),
    (["--key", "AKIAEXAMPLE"], "key was given without its secret"),
    (["--secret", "S3cr3t"], "secret was given without its key"),
    (["--option", "username=AKIAEXAMPLE"], "key was given without its secret"),  # (s3fs's alias of key)
])
def test_remote_set_refuses_settings_that_cannot_work(vault_path: Path, args: list[str], needle: str) -> None:
    """A bare bucket name once 'synced' into a local folder named after it, in whatever folder the command ran."""
    given = {"--database-url": "postgresql://u:p@h/db", "--bucket": "s3://lib"}
    given.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = run("--vault", str(vault_path), "remote", "set", *[x for pair in given.items() for x in pair])
    assert result.exit_code == 3 and needle in result.stderr, (result.exit_code, result.stderr)
    for secret in ("S3cr3t", "w0rd", "pw@"):  # a password is never repeated
        assert secret not in result.stderr
    with Vault.open(vault_path) as vault:
        assert vault.config.remote is None  # nothing stored


def test_a_refused_login_or_database_is_not_offline(vault_path: Path, server: str, s3_bucket: Any,
                                                    tmp_path: Path) -> None:
    """Wrong password, no such database: retrying later cannot help, so the exit code is not offline's (10)."""
    _add(vault_path, tmp_path, 1)
    vault = ["--vault", str(vault_path)]
    base, _, _dbname = server.rpartition("/")
    user_and_password, _, host = base.split("://", 1)[1].rpartition("@")
    for dsn, needle in ((f"postgresql://{user_and_password.split(':')[0]}:wrong-pw@{host}/{_dbname}", "password"),
                        (f"{base}/no_such_database", "does not exist")):
        _set_remote(vault_path, dsn, s3_bucket)
        result = run(*vault, "sync")
        assert result.exit_code == 11 and needle in result.stderr and "remote set" in result.stderr, result.stderr
        assert "wrong-pw" not in result.stderr
        state = as_json(run(*vault, "status", "--json"))
        assert state["online"] is False and state["problem"] == "not_ready" and state["pending_changes"] == 1
        assert "not ready to sync:" in ok(run(*vault, "status")).stdout


def test_status_reports_a_server_without_the_schema_instead_of_failing(vault_path: Path, pg_empty_database: str,
                                                                       s3_bucket: Any, tmp_path: Path) -> None:
    _add(vault_path, tmp_path, 2)
    _set_remote(vault_path, pg_empty_database, s3_bucket)
    state = as_json(run("--vault", str(vault_path), "status", "--json"))
    assert state["problem"] == "not_ready" and "schema apply" in state["offline_reason"]
    assert state["pending_changes"] == 2


def test_a_user_missing_on_the_server_is_named_and_nothing_is_sent(vault_path: Path, pg_database: str,
                                                                  s3_bucket: Any, tmp_path: Path) -> None:
    """Every row would be refused (foreign key on auth.users) after its file was uploaded for nothing."""
    _add(vault_path, tmp_path, 2)
    _set_remote(vault_path, pg_database, s3_bucket)  # pg_database: the schema, but no users
    result = run("--vault", str(vault_path), "sync")
    assert result.exit_code == 11 and f"user {USER_A} does not exist on the server" in result.stderr, result.stderr
    assert Bucket(f"s3://{s3_bucket.name}", s3_bucket.storage_options).objects("") == {}
    with Vault.open(vault_path) as vault:
        assert vault.db.conn.execute("SELECT count(*) FROM sync_rejected").fetchone()[0] == 0
    state = as_json(run("--vault", str(vault_path), "status", "--json"))
    assert state["problem"] == "not_ready" and state["pending_changes"] == 2
    assert f"user {USER_A} does not exist" in state["offline_reason"] and "sent" not in state["offline_reason"]


def test_schema_apply_without_privileges_says_who_can(pg_empty_database: str) -> None:
    role = "weak_" + pg_empty_database.rsplit("/", 1)[1][-8:]
    with psycopg.connect(pg_empty_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'weak-pw'")  # no CREATEROLE: cannot make anon & co.
    try:
        _credentials, _, rest = pg_empty_database.split("://", 1)[1].rpartition("@")
        result = run("schema", "apply", "--database-url", f"postgresql://{role}:weak-pw@{rest}")
        assert result.exit_code == 11 and "superuser or a role with CREATEROLE" in result.stderr, result.stderr
    finally:
        with psycopg.connect(pg_empty_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_remote_made_in_python_is_checked_too() -> None:
    from localvault import InvalidInputError
    from localvault.sync import Remote

    with pytest.raises(InvalidInputError, match="no scheme"):
        Remote("postgresql://u:p@h/db", "user-library")
    with pytest.raises(InvalidInputError, match="percent-encode"):
        Remote("postgresql://u:p@ss@h/db", "s3://lib")
    with pytest.raises(InvalidInputError, match="must be a dict"):
        Remote("postgresql://u:p@h/db", "s3://lib", storage_options="anon=true")  # type: ignore[arg-type]


def test_secrets_can_stay_off_the_command_line_and_show_hides_them(vault_path: Path, server: str, s3_bucket: Any,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ps` and shell history see no secret: the URL and keys come from the environment, the password from libpq's."""
    ids = _add(vault_path, tmp_path, 2)
    vault = ["--vault", str(vault_path)]
    base, _, dbname = server.rpartition("/")
    credentials, _, host = base.split("://", 1)[1].rpartition("@")
    user, _, password = credentials.partition(":")
    opts = s3_bucket.storage_options
    monkeypatch.setenv("LOCALVAULT_DATABASE_URL", f"postgresql://{user}@{host}/{dbname}")  # no password in it
    key, secret = "lv-key-id", "lv-secret-not-shown"  # moto takes any keys
    monkeypatch.setenv("LOCALVAULT_S3_KEY", key)
    monkeypatch.setenv("LOCALVAULT_S3_SECRET", secret)
    ok(run(*vault, "remote", "set", "--bucket", f"s3://{s3_bucket.name}", "--endpoint-url",
           opts["client_kwargs"]["endpoint_url"], "--region", "us-east-1"))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    refused = run(*vault, "sync")
    assert refused.exit_code == 11 and "password" in refused.stderr, refused.stderr
    monkeypatch.setenv("PGPASSWORD", password)
    assert as_json(run(*vault, "sync", "--json"))["rows_written"] == 2
    assert set(_server_titles(server)) == set(ids)

    with Vault.open(vault_path) as opened:  # what was stored came from the environment
        assert opened.config.remote is not None and opened.config.remote.storage_options["secret"] == secret
    shown = as_json(run(*vault, "remote", "show", "--json"))
    assert shown["storage_options"]["secret"] == "***" and shown["storage_options"]["key"] == key
    assert shown["bucket_url"] == f"s3://{s3_bucket.name}" and shown["database_url"] == f"postgresql://{user}@{host}/{dbname}"
    text = ok(run(*vault, "remote", "show")).stdout
    assert secret not in text and "secret: ***" in text and f"key: {key}" in text and f"s3://{s3_bucket.name}" in text

    _set_remote(vault_path, server, s3_bucket)  # a password in the URL is hidden too
    for output in (ok(run(*vault, "remote", "show")).stdout, json.dumps(as_json(run(*vault, "status", "--json")))):
        assert password not in output and f"{user}:***@{host}" in output


def test_remote_show_without_a_remote(vault_path: Path) -> None:
    assert "no remote is set" in ok(run("--vault", str(vault_path), "remote", "show")).stdout
    assert as_json(run("--vault", str(vault_path), "remote", "show", "--json")) is None


def test_a_missing_bucket_fails_the_sync_even_with_nothing_to_push(vault_path: Path, server: str, s3_bucket: Any,
                                                                   tmp_path: Path) -> None:
    vault = ["--vault", str(vault_path)]
    opts = s3_bucket.storage_options
    ok(run(*vault, "remote", "set", "--database-url", server, "--bucket", f"s3://{s3_bucket.name}-gone",
           "--endpoint-url", opts["client_kwargs"]["endpoint_url"], "--key", opts["key"], "--secret", opts["secret"]))
    for pending in (0, 2):
        if pending:
            _add(vault_path, tmp_path, pending)
        result = run(*vault, "sync")
        assert result.exit_code == 11 and "does not exist" in result.stderr, (pending, result.stderr)
        # (not "is its disk mounted?", said of a folder: a sync user's journey)
        assert "in its console or with its tools" in result.stderr and "mounted" not in result.stderr
        state = as_json(run(*vault, "status", "--json"))
        assert state["problem"] == "not_ready" and state["pending_changes"] == pending and state["last_sync"] is None
    assert _server_titles(server) == {}


@pytest.mark.parametrize("url", [
    "postgresql://u:S3CRET@h/db", "postgresql://u@h/db?sslpassword=S3CRET", "host=h sslpassword=S3CRET",
    "postgresql://u@h/db?pass%77ord=S3CRET", r"host=h password=ab\ S3CRET", "host=h password=ab&S3CRET",
    "postgresql://u:pa/S3CRET@h/db", "postgresql://postgres:S3CRET", "postgresql://u:S3CRET@[::1]:5432,h2:5433/db",
])
def test_no_form_of_database_password_is_shown(url: str) -> None:
    """Every place libpq reads a password from (and URLs it misreads) stays hidden in what status and remote show print."""
    from localvault.config import RemoteConfig, redact_database_url

    shown = redact_database_url(url)
    assert "S3CRET" not in shown and shown.startswith("postgresql://")
    config = RemoteConfig(url, "ftp://me:S3CRET@nas/lib", {"key": "AK", "connection_string": "AccountKey=S3CRET",
                                                          "client_kwargs": {"endpoint_url": "http://u:S3CRET@x"}})
    assert "S3CRET" not in json.dumps(config.redacted()) + repr(config) and "AK" in repr(config)


def test_a_url_that_has_lost_its_host_is_refused_without_being_repeated(vault_path: Path) -> None:
    result = run("--vault", str(vault_path), "remote", "set", "--database-url", "postgresql://postgres:S3CRET",
                 "--bucket", "s3://b")
    assert result.exit_code == 3 and "port is not a number" in result.stderr and "S3CRET" not in result.output


def test_a_folder_bucket_on_a_disk_not_mounted_fails_and_a_dry_run_makes_no_folder(vault_path: Path, server: str,
                                                                                   tmp_path: Path) -> None:
    vault = ["--vault", str(vault_path)]
    nas = tmp_path / "nas"  # the mount point is missing: the NAS is not mounted
    ok(run(*vault, "remote", "set", "--database-url", server, "--bucket", f"file://{nas}/user-library"))
    result = run(*vault, "sync")
    assert result.exit_code == 11 and "is its disk mounted?" in result.stderr, result.stderr
    assert not nas.exists()
    nas.mkdir()  # mounted now
    assert as_json(run(*vault, "sync", "--dry-run", "--json"))["rows_written"] == 0
    assert not (nas / "user-library").exists()  # a dry run changes nothing, not even a folder
    ids = _add(vault_path, tmp_path, 1)
    assert as_json(run(*vault, "sync", "--json"))["files_uploaded"] == 1
    assert [p.name for p in (nas / "user-library" / USER_A).iterdir()] == [f"{ids[0]}.png"]


def test_schema_apply_does_not_show_a_password_taken_for_a_port() -> None:
    result = run("schema", "apply", "--database-url", "postgresql://postgres:S3CRET")  # "@host" left out
    assert result.exit_code == 3 and result.stderr.startswith("error:") and "S3CRET" not in result.output


@pytest.mark.parametrize(("url", "needle"), [("", "the database URL is empty"),
                                             ("postgresql://u@127.0.0.1:99999/db", "not one from 1 to 65535")])
def test_schema_apply_refuses_a_url_that_cannot_work_as_remote_set_does(url: str, needle: str) -> None:
    """Before: exit 10, "cannot connect … sync again once it can be reached", for a URL no retry makes work."""
    result = run("schema", "apply", "--database-url", url)
    assert result.exit_code == 3 and needle in result.stderr, (result.exit_code, result.stderr)


@pytest.mark.parametrize("extra", [[], ["--option", "profile=nosuchprofile"], ["--option", "profile=broken"]],
                         ids=["no-credentials", "unknown-profile", "failing-credential-process"])
def test_s3_credentials_missing_are_not_offline(vault_path: Path, server: str, s3_bucket: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    """No S3 keys anywhere, or a profile that does not exist: a settings problem (exit 11, 'not ready'), which
    no retry fixes, not 'offline'."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws but a profile whose keys come from a failing program
    (tmp_path / "home" / ".aws").mkdir(parents=True)
    (tmp_path / "home" / ".aws" / "config").write_text("[profile broken]\ncredential_process = /bin/false\n")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # nor an instance role to wait for
    _add(vault_path, tmp_path, 1)
    vault = ["--vault", str(vault_path)]
    ok(run(*vault, "remote", "set", "--database-url", server, "--bucket", f"s3://{s3_bucket.name}", "--endpoint-url",
           s3_bucket.storage_options["client_kwargs"]["endpoint_url"], "--region", "us-east-1", *extra))
    result = run(*vault, "sync")
    assert result.exit_code == 11, (result.exit_code, result.stderr)
    assert "cannot be used" in result.stderr and "--key and --secret" in result.stderr
    state = as_json(run(*vault, "status", "--json"))
    assert state["problem"] == "not_ready" and state["pending_changes"] == 1
    assert "not ready to sync:" in ok(run(*vault, "status")).stdout


def test_full_sync_from_the_cli(vault_path: Path, server: str, s3_bucket: Any, tmp_path: Path) -> None:
    """`sync --full` after the server lost a row (as after restoring the vault from a backup)."""
    _set_remote(vault_path, server, s3_bucket)
    ids = _add(vault_path, tmp_path, 2)
    vault = ["--vault", str(vault_path)]
    ok(run(*vault, "sync"))
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("DELETE FROM public.user_library WHERE id = %s", (ids[0],))
        conn.execute("DELETE FROM localvault.deleted_rows WHERE id = %s", (ids[0],))  # lost: no record of a delete
    assert as_json(run(*vault, "sync", "--json"))["rows_written"] == 0
    assert as_json(run(*vault, "sync", "--full", "--dry-run", "--json"))["rows_written"] == 2
    report = as_json(run(*vault, "sync", "--full", "--json"))
    # The lost row is written again; the other, the same on both sides, is left as it is.
    assert (report["rows_written"], report["conflicts"], report["files_skipped"]) == (1, 0, 2)
    assert set(_server_titles(server)) == set(ids)


def test_a_sync_interrupted_says_nothing_was_lost(vault_path: Path, server: str, s3_bucket: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the uploads: exit 130 with what it means for the user's data, not a bare 'interrupted'."""
    _set_remote(vault_path, server, s3_bucket)
    _add(vault_path, tmp_path, 2)

    def ctrl_c(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Bucket, "upload", ctrl_c)
    result = run("--vault", str(vault_path), "sync")
    assert result.exit_code == 130
    assert "interrupted: nothing was lost" in result.stderr and "the next 'localvault sync' sends the rest" in \
        result.stderr
    monkeypatch.undo()
    assert "pushed 2 rows" in ok(run("--vault", str(vault_path), "sync")).stdout


def test_a_web_address_stored_as_the_bucket_is_refused_in_one_line(vault_path: Path, server: str,
                                                                     tmp_path: Path) -> None:
    """An endpoint and a bucket pasted as one http:// bucket URL (a sync user's journey): it passed 'remote set'
    and 'status' said online (fsspec's HTTP filesystem found the bucket's page), then the upload's 403 was a
    traceback. 'remote set' refuses it now (see above); one stored before, or by hand, is refused by sync and
    status alike, in one line that says what to give instead, and nothing is lost."""
    _add(vault_path, tmp_path, 1)
    unused = f"file://{tmp_path / 'unused'}"
    ok(run("--vault", str(vault_path), "remote", "set", "--database-url", server, "--bucket", unused))
    toml = vault_path / "localvault.toml"
    toml.write_text(toml.read_text().replace(unused, "http://127.0.0.1:9/library"))
    result = run("--vault", str(vault_path), "sync")
    assert result.exit_code == 3 and "Traceback" not in result.stderr + result.stdout, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--bucket s3://library --endpoint-url http://127.0.0.1:9" in lines[0], result.stderr
    with Vault.open(vault_path) as vault:  # nothing lost: the row stays queued
        assert vault.db.conn.execute("SELECT count(*) FROM sync_outbox").fetchone()[0] >= 1


def test_an_http_stores_answer_is_judged_by_its_status() -> None:
    """A 4xx from an HTTP store is its refusal for good; a 5xx, 408 or 429 is the store being busy (retried)."""
    from aiohttp import ClientResponseError

    from localvault.sync.retry import is_connection_trouble
    from localvault.sync.store_errors import store_refusal

    def answer(status: int) -> ClientResponseError:
        return ClientResponseError(None, (), status=status, message="Forbidden" if status == 403 else "busy")  # type: ignore[arg-type]

    assert store_refusal(answer(403)) == "403: Forbidden" and not is_connection_trouble(answer(403))
    for busy in (500, 503, 408, 429):
        assert store_refusal(answer(busy)) is None and is_connection_trouble(answer(busy)), busy
