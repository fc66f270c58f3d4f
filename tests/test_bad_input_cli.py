"""Bad input through the real CLI: each case is refused with its specific LocalVaultError's exit
code and ONE clear line on stderr (no traceback), and nothing is written (rows and files unchanged).

The cases run as subprocesses, several at a time; every case gets its own verdict.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from reliability.common import USER_A, USER_B, run_cli, tiny_png

from localvault import InvalidInputError, Vault

# Exit codes of the error classes (localvault.errors).
NOT_FOUND, INVALID, DUPLICATE, CORRUPT, SCHEMA, STORAGE = 2, 3, 4, 6, 7, 8
UNKNOWN = "12345678-1234-4123-8123-123456789abc"


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    words: tuple[str, ...] = ()  # each must appear in the error line (case-insensitive)
    vault: Path | None = None  # another vault than the main one
    result: Any = field(default=None, repr=False)


def _snapshot(root: Path) -> tuple[dict[str, str], frozenset[tuple[str, int]]]:
    """A digest of every row of each table, and every file under the vault with its size."""
    conn = sqlite3.connect(f"file:{root / 'vault.db'}?mode=ro", uri=True)
    digests = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                                 " AND name NOT LIKE '%fts%' ORDER BY name"):
        digest = hashlib.sha256()
        for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1'):
            digest.update(repr(row).encode())
        digests[table] = digest.hexdigest()
    conn.close()
    files = set()
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if not name.startswith("vault.db"):
                path = Path(folder) / name
                files.add((str(path.relative_to(root)), path.stat().st_size))
    return digests, frozenset(files)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("bad-cli")
    root = base / "vault"
    src = base / "src"
    src.mkdir()
    vault = Vault.create(root, user_id=USER_A)
    (src / "good.png").write_bytes(tiny_png(1, salt=30))
    ws = vault.workspace.add(src / "good.png", prompt="fox")
    kept = vault.library.save(ws.id, title="kept")
    (src / "fresh.png").write_bytes(tiny_png(2, salt=30))
    fresh = vault.workspace.add(src / "fresh.png")
    vault.collections.create("Mine")
    vault.close()
    other = Vault.open(root, user_id=USER_B)
    theirs = other.collections.create("Theirs")
    (src / "b.png").write_bytes(tiny_png(3, salt=30))
    their_asset = other.library.add(src / "b.png", title="B's")
    other.close()
    run_cli(root, "ls", check=True)  # the first open records its housekeeping; later opens write nothing
    return {"base": base, "root": root, "src": src, "ws": ws.id, "kept": kept.id, "fresh": fresh.id,
            "theirs": theirs.id, "their_asset": their_asset.id}


def _files(world: dict[str, Any]) -> dict[str, Path]:
    src: Path = world["src"]
    bad = src / "bad"
    bad.mkdir(exist_ok=True)
    png = tiny_png(5, salt=30)
    made = {
        "png_as_jpg": (bad / "really-a-png.jpg", png),
        "truncated": (bad / "truncated.png", png[: len(png) // 2]),
        "empty": (bad / "empty.png", b""),
        "text_mp4": (bad / "notes.mp4", b"just some text, not a video\n" * 10),
        "text_gif": (bad / "anim.gif", b"GIF89a not really"),
        "garbage_png": (bad / "garbage.png", os.urandom(2048)),
    }
    paths = {}
    for key, (path, data) in made.items():
        path.write_bytes(data)
        paths[key] = path
    sparse = bad / "huge.png"
    with open(sparse, "wb") as out:
        out.write(png[:64])
        out.truncate(1024**3 + 4096)  # over 1 GiB, sparse: no real disk space
        out.seek(1024**3 + 4096 - len(png[-12:]))
        out.write(png[-12:])
    paths["huge"] = sparse
    # Folders for import: a symlink leading out of the folder, and a path with '..'.
    outside = src / "outside.png"
    outside.write_bytes(tiny_png(6, salt=30))
    rig = src / "rig"
    rig.mkdir(exist_ok=True)
    link = rig / "escape.png"
    if not link.exists():
        link.symlink_to(outside)
    paths["rig"] = rig
    paths["dotdot"] = src / "rig" / ".." / "rig" / ".." / ".." / "src" / "bad"
    return paths


def _broken_vaults(world: dict[str, Any]) -> dict[str, Path]:
    base: Path = world["base"]
    out = {}
    corrupt = base / "corrupt"
    Vault.create(corrupt, user_id=USER_A).close()
    (corrupt / "vault.db").write_bytes(b"this is not an SQLite database at all " * 200)
    out["corrupt"] = corrupt
    truncated = base / "truncated-db"
    Vault.create(truncated, user_id=USER_A).close()
    data = (truncated / "vault.db").read_bytes()
    (truncated / "vault.db").write_bytes(data[:100] + b"\0" * (len(data) - 100))
    out["zeroed"] = truncated
    newer = base / "newer"
    Vault.create(newer, user_id=USER_A).close()
    conn = sqlite3.connect(newer / "vault.db")
    conn.execute("PRAGMA user_version = 9999")
    conn.close()
    out["newer"] = newer
    for name, settings in (("bad_toml", "user_id = [unclosed\n"), ("toml_folder", None),
                           ("number_user", "user_id = 5\n"), ("text_user", 'user_id = "notauuid"\n')):
        out[name] = base / name
        Vault.create(out[name], user_id=USER_A).close()
        toml = out[name] / "localvault.toml"
        if settings is None:  # a folder where the file should be
            toml.unlink()
            toml.mkdir()
        else:
            toml.write_text(settings)
    foreign = base / "foreign"
    foreign.mkdir(exist_ok=True)
    conn = sqlite3.connect(foreign / "vault.db")
    conn.execute("CREATE TABLE IF NOT EXISTS invoices (id INTEGER)")
    conn.close()
    (foreign / "localvault.toml").write_text(f'user_id = "{USER_A}"\n')
    out["foreign"] = foreign
    out["missing"] = base / "no-vault-here"
    return out


def _cases(world: dict[str, Any]) -> list[Case]:
    f = _files(world)
    v = _broken_vaults(world)
    ws, kept, fresh, theirs, their_asset = (world[k] for k in ("ws", "kept", "fresh", "theirs", "their_asset"))
    good = str(world["src"] / "fresh.png")
    return [
        Case("PNG named .jpg", ["add", str(f["png_as_jpg"])], INVALID, ("JPG", "PNG")),
        Case("truncated PNG", ["add", str(f["truncated"])], INVALID, ("truncated",)),
        Case("zero-byte file", ["add", str(f["empty"])], INVALID, ("empty",)),
        Case("file over 1 GiB (sparse)", ["add", str(f["huge"])], INVALID, ("1 GiB",)),
        Case("text file named .mp4", ["add", str(f["text_mp4"])], INVALID, ("not a JPEG",)),
        Case("unsupported extension .gif", ["add", str(f["text_gif"])], INVALID, ()),
        Case("random bytes named .png", ["add", str(f["garbage_png"])], INVALID, ()),
        # One argv string is capped at 128 KiB by Linux: the longest prompt a command line can carry.
        # (A 1 MB prompt given to the API is refused below; one embedded in a file is cut to 64 K by design.)
        Case("prompt of 128 KB on the command line", ["add", good, "--prompt", "x" * 131_000], INVALID, ("prompt",)),
        Case("file that does not exist", ["add", str(world["src"] / "nope.png")], NOT_FOUND, ("nope.png does not exist",)),
        Case("a folder given as a file", ["add", str(world["src"])], INVALID, ("not a file",)),
        Case("negative seed", ["add", good, "--seed", "-1"], INVALID, ("seed",)),
        Case("non-integer seed", ["add", good, "--seed", "1.5"], INVALID, ("seed",)),
        Case("seed above 2^63-1", ["add", good, "--seed", str(2**63)], INVALID, ("seed",)),
        Case("seed that is a word", ["add", good, "--seed", "abc"], INVALID, ("seed",)),
        Case("invalid job UUID", ["add", good, "--job", "not-a-uuid"], INVALID, ("UUID",)),
        Case("negative asset index", ["add", good, "--index", "-3"], INVALID, ("index",)),
        Case("settings JSON that is a list", ["add", good, "--settings", "[1, 2]"], INVALID, ("object",)),
        Case("settings JSON that is a string", ["add", good, "--settings", '"steps"'], INVALID, ("object",)),
        Case("settings that are not JSON", ["add", good, "--settings", "{steps: 20"], INVALID, ("JSON",)),
        Case("prompt with control characters", ["add", good, "--prompt", "a\x07b\x1b[2J"], INVALID, ("prompt",)),
        Case("save: invalid UUID", ["save", "fox-123"], INVALID, ("UUID",)),
        Case("save: unknown workspace asset", ["save", UNKNOWN], NOT_FOUND, ()),
        Case("save: tag with control characters", ["save", fresh, "--tag", "bad\x01tag"], INVALID, ("tag",)),
        Case("save: tag with a newline", ["save", fresh, "--tag", "two\nlines"], INVALID, ("tag",)),
        Case("save: tag too long", ["save", fresh, "--tag", "t" * 65], INVALID, ("tag",)),
        Case("save: title too long", ["save", fresh, "--title", "T" * 301], INVALID, ("title",)),
        Case("save: unknown collection", ["save", fresh, "--collection", "Nowhere"], NOT_FOUND,
             ("Nowhere", 'collections create "Nowhere"')),
        Case("save: another user's collection (by id)", ["save", fresh, "--collection", theirs], NOT_FOUND, ()),
        Case("save: another user's collection (by name)", ["save", fresh, "--collection", "Theirs"], NOT_FOUND, ()),
        Case("save: the same file twice", ["save", ws], DUPLICATE, ("already",)),
        Case("update: move into another user's collection", ["update", kept, "--move-to", theirs], NOT_FOUND, ()),
        Case("update: unknown collection", ["update", kept, "--move-to", "Nowhere"], NOT_FOUND, ()),
        Case("update: invalid UUID", ["update", "1234", "--title", "x"], INVALID, ("UUID",)),
        Case("update: another user's asset", ["update", their_asset, "--title", "stolen"], NOT_FOUND, ()),
        Case("update: tag with control characters", ["update", kept, "--add-tag", "\x1b[31mred"], INVALID, ("tag",)),
        Case("rm: invalid UUID", ["rm", "../../etc/passwd"], INVALID, ("UUID",)),
        Case("rm: unknown asset", ["rm", UNKNOWN], NOT_FOUND, ()),
        Case("rm: another user's asset", ["rm", their_asset], NOT_FOUND, ()),
        Case("show: invalid UUID", ["show", "zzzz"], INVALID, ("UUID",)),
        Case("export: unknown asset", ["export", UNKNOWN, str(world["base"])], NOT_FOUND, ()),
        Case("export: onto an existing file", ["export", kept, good], DUPLICATE, ("exists",)),
        Case("collections create: empty name", ["collections", "create", "  "], INVALID, ("name",)),
        Case("collections create: name taken", ["collections", "create", "Mine"], DUPLICATE, ("Mine",)),
        Case("collections delete: another user's", ["collections", "delete", theirs], NOT_FOUND, ()),
        Case("collections rename: unknown", ["collections", "rename", "Nowhere", "X"], NOT_FOUND, ()),
        Case("ls: garbage cursor", ["ls", "--cursor", "!!not-a-cursor!!"], INVALID, ("cursor",)),
        Case("ls: zero limit", ["ls", "--limit", "0"], INVALID, ("page size",)),
        Case("update: --move-to with --no-collection", ["update", kept, "--move-to", "c", "--no-collection"], INVALID,
             ("--move-to", "--no-collection")),
        Case("ls: empty search", ["ls", "--search", '""'], INVALID, ("search",)),
        Case("--user that is not a UUID", ["--user", "alice", "ls"], INVALID, ("UUID", "your account's id")),
        Case("add: --job that is not a UUID", ["add", good, "--job", "notauuid"], INVALID,
             ("UUID", "ls workspace --json")),
        Case("save: a library asset's id", ["save", kept], NOT_FOUND, ("a library asset already", "localvault update")),
        Case("update: a workspace asset's id", ["update", ws, "--title", "x"], NOT_FOUND,
             ("a workspace asset", "localvault save")),
        Case("update: nothing to change", ["update", kept], INVALID, ("nothing to change",)),
        Case("import: --copy with --move", ["import", str(world["src"]), "--copy", "--move"], INVALID,
             ("--copy and --move",)),
        Case("watch: --move with --link", ["watch", str(world["src"]), "--move", "--link"], INVALID,
             ("--move and --link",)),
        Case("sync with no remote set", ["sync"], INVALID, ("remote",)),
        Case("remote set: malformed --option", ["remote", "set", "--database-url", "postgresql://x", "--bucket", "s3://b",
                                                "--option", "novalue"], INVALID, ("option",)),
        Case("init over an existing vault", ["init", str(world["root"])], DUPLICATE, ("already",)),
        Case("corrupt vault.db", ["ls"], CORRUPT, ("not a readable",), vault=v["corrupt"]),
        Case("vault.db with a zeroed header", ["ls"], CORRUPT, (), vault=v["zeroed"]),
        Case("vault from a newer schema version", ["ls"], SCHEMA, ("newer",), vault=v["newer"]),
        Case("newer schema version, even for add", ["add", good], SCHEMA, ("newer",), vault=v["newer"]),
        Case("localvault.toml that is not TOML", ["ls"], CORRUPT, ("TOML",), vault=v["bad_toml"]),
        Case("localvault.toml that is a folder", ["ls"], STORAGE, ("cannot read", "localvault.toml"),
             vault=v["toml_folder"]),
        Case("localvault.toml with a number for user_id", ["ls"], CORRUPT, ("localvault.toml", "user_id"),
             vault=v["number_user"]),
        Case("localvault.toml whose user_id is not a UUID", ["ls"], CORRUPT, ("localvault.toml", "not a UUID"),
             vault=v["text_user"]),
        Case("vault.db of another program", ["ls"], CORRUPT, ("not a localvault",), vault=v["foreign"]),
        Case("no vault at the path", ["ls"], NOT_FOUND, ("no vault",), vault=v["missing"]),
    ]


def _import_cases(world: dict[str, Any]) -> list[Case]:
    f = _files(world)
    return [
        Case("import: a symlink leading out of the folder", ["import", str(f["rig"]), "--json"], 0, ()),
        Case("import: a path with '..'", ["import", str(f["dotdot"]), "--json"], 0, ()),
    ]


def _run(world: dict[str, Any], case: Case) -> Case:
    case.result = run_cli(case.vault or world["root"], *case.args, timeout=300)
    return case


def test_bad_input_through_the_cli(world: dict[str, Any]) -> None:
    cases = _cases(world)
    others = {c.vault for c in cases if c.vault is not None and (c.vault / "vault.db").exists()}
    before = _snapshot(world["root"])
    before_others = {p: (p / "vault.db").read_bytes() for p in others}
    with ThreadPoolExecutor(max_workers=6) as pool:
        done = list(pool.map(lambda c: _run(world, c), cases))
    failures = []
    for case in done:
        result = case.result
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        problem = None
        if result.returncode != case.code:
            problem = f"exit {result.returncode}, expected {case.code}"
        elif "Traceback" in result.stderr or len(lines) != 1:
            problem = f"{len(lines)} stderr lines, expected one"
        elif not lines[0].startswith("error: "):
            problem = "the line does not start with 'error: '"
        elif not all(w.lower() in lines[0].lower() for w in case.words):
            problem = f"the line lacks {case.words}"
        if problem:
            failures.append(f"{case.name}: {problem}\n    stderr: {result.stderr.strip()[:400]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    after = _snapshot(world["root"])
    changed = [t for t in before[0] if before[0][t] != after[0].get(t)]
    assert after == before, f"a refused command wrote to the vault: tables {changed}, files {before[1] ^ after[1]}"
    for path, data in before_others.items():
        assert (path / "vault.db").read_bytes() == data, f"{path}: a refused command changed vault.db"
    assert not (world["base"] / "no-vault-here").exists()
    with Vault.open(world["root"]) as vault:  # the 1 MB prompt, through the API the CLI calls
        with pytest.raises(InvalidInputError, match="prompt"):
            vault.workspace.add(world["src"] / "fresh.png", prompt="p" * 1_000_000)
        with pytest.raises(InvalidInputError, match="prompt"):
            vault.library.add(world["src"] / "fresh.png", prompt="p" * 1_000_000)
    assert _snapshot(world["root"]) == before
    print(f"\nbad input (CLI): {len(cases)} cases, each refused with its error's exit code and one line; "
          "0 rows or files written")
    assert len(cases) >= 30


def test_import_refuses_escaping_paths_and_writes_nothing(world: dict[str, Any]) -> None:
    before = _snapshot(world["root"])
    for case in _import_cases(world):
        result = _run(world, case).result
        assert "Traceback" not in result.stderr, result.stderr
        assert '"imported": []' in result.stdout.replace("\n", "").replace("  ", " ") or '"imported": 0' in result.stdout, \
            (case.name, result.stdout)
    assert _snapshot(world["root"]) == before
