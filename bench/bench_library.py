"""Library at scale: bulk insert rate and list/tag/search page latency.

Creates a vault, inserts ``--rows`` library rows for user A (default
1,000,000) and a tenth as many for user B, interleaved and with increasing
``created_at``, straight into ``user_library`` through the vault's own
connection (``vault.db.write()`` + ``executemany``, ~10k rows per
transaction). The same rows go, batch for batch, into a fresh database made
by a plain ``sqlite3`` connection from the same migration SQL; the script
prints both rates and their ratio.

It then times, for user A, ``vault.library.list`` pages of 50: newest first at
page 1 and at a deep page (keyset cursor), a tag filter at page 1 and deep,
and a full-text search for a rare word and for a word in most prompts. Search
results are ordered by recency (local_seq descending), not by rank. Last, the
worst case of a search for a Japanese/Chinese word (a substring scan).

Run ``python bench/bench_library.py`` (full size) or ``--rows 20000`` to try.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Stopwatch, machine_line, percentile, print_rss, summary, time_runs, verdict

from localvault import Vault
from localvault.rows import encode_cursor
from localvault.timestamps import format_time

USER_A = "aaaaaaaa-0000-4000-8000-00000000000a"
USER_B = "bbbbbbbb-0000-4000-8000-00000000000b"
#: In about 80 % of prompts.
COMMON_WORD = "cinematic"
#: In about 50 prompts of user A, whatever --rows is.
RARE_WORD = "axolotl"
RARE_COUNT = 50
BATCH = 10_000
START = datetime(2025, 1, 1, tzinfo=timezone.utc)

INSERT_SQL = (
    "INSERT INTO user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type, duration_seconds,"
    " original_prompt, model_used, generation_seed, generation_settings, title, tags, is_favorite, visibility,"
    " collection_id, original_asset_id, thumbnail_path, width, height, sha256, created_at, updated_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
COLLECTION_SQL = "INSERT INTO user_collections (id, user_id, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"

_SYLLABLES = ["ka", "lo", "mi", "ren", "sa", "tor", "vel", "qui", "dra", "fen", "gal", "hu", "is", "jor", "ne",
              "pax", "ru", "sti", "ul", "wen", "yo", "zer", "bri", "cor", "dal", "em", "fy", "gor", "hal", "ix"]
_SCENES = ["portrait", "landscape", "city", "forest", "ocean", "mountain", "robot", "dragon", "castle", "street",
           "night", "sunset", "neon", "studio", "lighting", "detailed", "painting", "photo", "anime", "oil"]
MODELS = ["sdxl-1.0", "sd-1.5", "flux-dev", "flux-schnell", "playground-v2.5", "pixart-sigma"]


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words = list(_SCENES)
    seen = set(words) | {COMMON_WORD, RARE_WORD}
    while len(words) < size:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _tag_names(rng: random.Random, size: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < size:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) + "-" + rng.choice(_SCENES)
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


class Dataset:
    """Deterministic, streamed library rows for users A and B (interleaved, created_at increasing)."""

    def __init__(self, rows_a: int, seed: int = 7) -> None:
        self.rows_a = rows_a
        self.rows_b = rows_a // 10
        self.total = self.rows_a + self.rows_b
        rng = random.Random(seed)
        self.vocabulary = _vocabulary(rng, 2_000)
        #: Zipf-like weights: a few words and tags are frequent, most are not.
        self.word_weights = _cumulative([1.0 / (rank + 1) for rank in range(len(self.vocabulary))])
        self.tags = _tag_names(rng, 200)
        self.tag_weights = _cumulative([1.0 / (rank + 1) for rank in range(len(self.tags))])
        self.collections = {
            USER_A: [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(5)],
            USER_B: [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(2)],
        }
        self.seed = seed
        self.rare_every = max(1, self.rows_a // RARE_COUNT)

    @property
    def top_tag(self) -> str:
        return self.tags[0]

    def collection_rows(self) -> list[tuple[str, str, str, str, str]]:
        stamp = format_time(START - timedelta(days=1))
        return [(cid, user, f"collection {i}", stamp, stamp)
                for user, ids in self.collections.items() for i, cid in enumerate(ids)]

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Every row, in insert order; user B's rows are spread evenly among A's."""
        rng = random.Random(self.seed * 1_000_003)
        vocabulary, word_weights = self.vocabulary, self.word_weights
        tags, tag_weights = self.tags, self.tag_weights
        choices, rand, getrandbits = rng.choices, rng.random, rng.getrandbits
        a_index = 0
        b_done = 0
        settings = [json.dumps({"steps": s, "cfg": c, "sampler": m}) for s in (20, 30, 50) for c in (5.0, 7.0)
                    for m in ("euler", "dpmpp_2m")]
        for i in range(self.total):
            if b_done < self.rows_b and (i + 1) * self.rows_b // self.total > b_done:
                user = USER_B
                b_done += 1
                rare = False
            else:
                user = USER_A
                rare = a_index % self.rare_every == 0 and a_index // self.rare_every < RARE_COUNT
                a_index += 1
            words = choices(vocabulary, cum_weights=word_weights, k=8 + int(rand() * 16))
            if rand() < 0.8:
                words.insert(int(rand() * len(words)), COMMON_WORD)
            if rare:
                words.insert(int(rand() * len(words)), RARE_WORD)
            prompt = " ".join(words)
            tag_count = int(rand() * 5)
            row_tags = list(dict.fromkeys(choices(tags, cum_weights=tag_weights, k=tag_count))) if tag_count else []
            asset_id = str(uuid.UUID(int=getrandbits(128), version=4))
            video = rand() < 0.05
            collection = rng.choice(self.collections[user]) if rand() < 0.02 else None
            stamp = format_time(START + timedelta(milliseconds=i * 1_500 + int(rand() * 1_000)))
            yield (
                asset_id, user, "video" if video else "image", f"{user}/{asset_id}.{'mp4' if video else 'png'}",
                100_000 + int(rand() * 5_000_000), "video/mp4" if video else "image/png",
                round(2 + rand() * 10, 2) if video else None,
                prompt, MODELS[i % len(MODELS)], getrandbits(32), settings[i % len(settings)],
                f"Image {i}" if rand() < 0.1 else None, json.dumps(row_tags), int(rand() < 0.02), "private",
                collection, None, None, 1024, 1024 if rand() < 0.5 else 768,
                hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), stamp, stamp,
            )


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def _migration_sql() -> str:
    folder = resources.files("localvault") / "schema" / "sqlite"
    return "\n".join(entry.read_text(encoding="utf-8")
                     for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".sql"))


def _pragmas(conn: sqlite3.Connection) -> str:
    names = ("journal_mode", "synchronous", "foreign_keys", "cache_size")
    return ", ".join(f"{n}={conn.execute(f'PRAGMA {n}').fetchone()[0]}" for n in names)


def insert(vault: Vault, raw_path: Path | None, data: Dataset) -> None:
    """Insert the dataset into the vault and (batch for batch) into a raw sqlite3 database; print rates."""
    raw: sqlite3.Connection | None = None
    if raw_path is not None:
        raw = sqlite3.connect(raw_path, isolation_level=None)
        raw.executescript(_migration_sql())
    vault_watch, raw_watch = Stopwatch(), Stopwatch()
    collections = data.collection_rows()
    with vault.db.write() as conn:
        conn.executemany(COLLECTION_SQL, collections)
    if raw is not None:
        raw.execute("BEGIN")
        raw.executemany(COLLECTION_SQL, collections)
        raw.execute("COMMIT")
    wall = time.perf_counter()
    batch: list[tuple[Any, ...]] = []
    done = 0
    next_report = 100_000

    def flush() -> None:
        with vault_watch:
            with vault.db.write() as conn:
                conn.executemany(INSERT_SQL, batch)
        if raw is not None:
            with raw_watch:
                raw.execute("BEGIN")
                raw.executemany(INSERT_SQL, batch)
                raw.execute("COMMIT")

    for row in data.rows():
        batch.append(row)
        if len(batch) >= BATCH:
            flush()
            done += len(batch)
            batch = []
            if done >= next_report:
                print(f"  ... {done:,} rows, {time.perf_counter() - wall:.0f} s", flush=True)
                next_report += 100_000
    if batch:
        flush()
        done += len(batch)
    wall = time.perf_counter() - wall
    vault_rate = done / vault_watch.total
    print(f"insert: {done:,} rows ({data.rows_a:,} user A + {data.rows_b:,} user B) in batches of {BATCH:,}; "
          f"wall {wall:.1f} s including row generation")
    print(f"  vault  (vault.db.write() + executemany; {_pragmas(vault.db.conn)}): "
          f"{vault_watch.total:7.1f} s  {vault_rate:10,.0f} rows/s")
    if raw is not None:
        raw_rate = done / raw_watch.total
        print(f"  raw    (sqlite3.connect + BEGIN/executemany/COMMIT; {_pragmas(raw)}): "
              f"{raw_watch.total:7.1f} s  {raw_rate:10,.0f} rows/s")
        ratio = vault_rate / raw_rate
        print(f"  ratio vault/raw: {ratio:.2f} (target >= 0.80) {'OK' if ratio >= 0.8 else 'MISSED'}")
        raw.close()


def _traced_sql(vault: Vault, call: Callable[[], object]) -> list[str]:
    statements: list[str] = []
    vault.db.conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        vault.db.conn.set_trace_callback(None)
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")]


def _explain(vault: Vault, call: Callable[[], object]) -> None:
    for sql in _traced_sql(vault, call):
        for row in vault.db.conn.execute("EXPLAIN QUERY PLAN " + sql):
            print(f"      plan: {row[3]}")


def _cursor_at(vault: Vault, sql: str, params: tuple[Any, ...]) -> str:
    row = vault.db.conn.execute(sql, params).fetchone()
    if row is None:
        raise SystemExit("not enough rows for the deep page; use a larger --rows")
    return encode_cursor("library", row[0], row[1])


def queries(vault: Vault, data: Dataset, runs: int, explain: bool) -> None:
    """Time the page queries for user A and print p50/p99 against the targets."""
    library = vault.library
    conn = vault.db.conn
    deep_page = max(2, data.rows_a // 100)  # page 10,000 of 1,000,000 rows
    deep_cursor = _cursor_at(
        vault, "SELECT created_at, id FROM user_library WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
        (USER_A, (deep_page - 1) * 50 - 1),
    )
    tag = data.top_tag
    tag_rows = conn.execute("SELECT count(*) FROM library_tags WHERE user_id = ? AND tag = ?", (USER_A, tag)).fetchone()[0]
    tag_page = max(2, tag_rows // 100)
    tag_cursor = _cursor_at(
        vault, "SELECT created_at, id FROM library_tags WHERE user_id = ? AND tag = ?"
        " ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
        (USER_A, tag, (tag_page - 1) * 50 - 1),
    )
    rare_total = conn.execute("SELECT count(*) FROM library_fts WHERE library_fts MATCH ?", (RARE_WORD,)).fetchone()[0]
    common_total = conn.execute("SELECT count(*) FROM library_fts WHERE library_fts MATCH ?", (COMMON_WORD,)).fetchone()[0]

    # Correctness of the deep pages before timing them.
    expected = conn.execute(
        "SELECT id FROM user_library WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
        (USER_A, (deep_page - 1) * 50),
    ).fetchone()[0]
    got = library.list(limit=50, cursor=deep_cursor)
    assert got.items[0].id == expected and len(got.items) == 50, "deep page is not the expected page"
    search = library.list(search=COMMON_WORD)
    assert len(search.items) == 50 and all(COMMON_WORD in a.original_prompt for a in search.items)
    assert all(a.user_id == USER_A for a in search.items)
    rare = library.list(search=RARE_WORD)
    assert rare.items and all(RARE_WORD in a.original_prompt for a in rare.items)

    cases: list[tuple[str, Callable[[], object], float]] = [
        ("newest first, page 1", lambda: library.list(limit=50), 2.0),
        (f"newest first, page {deep_page:,} (keyset cursor)", lambda: library.list(limit=50, cursor=deep_cursor), 2.0),
        (f"tag {tag!r} ({tag_rows:,} rows), page 1", lambda: library.list(tags=[tag]), 5.0),
        (f"tag {tag!r}, page {tag_page:,} (keyset cursor)", lambda: library.list(tags=[tag], cursor=tag_cursor), 5.0),
        (f"search rare word {RARE_WORD!r} ({rare_total} matches, {len(rare.items)} for A), 50 newest",
         lambda: library.list(search=RARE_WORD), 20.0),
        (f"search common word {COMMON_WORD!r} ({common_total:,} matches), 50 newest",
         lambda: library.list(search=COMMON_WORD), 20.0),
        ("search common word, page 2 (cursor)",
         lambda: library.list(search=COMMON_WORD, cursor=search.next_cursor), 20.0),
    ]
    print(f"pages of 50 for user A, {runs} timed runs each after 5 warm-up runs (time.perf_counter,"
          " whole library.list call incl. model building);")
    print("search results are ordered by recency of saving (local_seq descending), not by rank")
    for label, call, target in cases:
        samples = time_runs(call, runs)
        p99 = percentile(samples, 99) * 1000
        print(f"  {label}")
        print(f"    {summary(samples)}  target p99 <= {target:g} ms {verdict(p99, target)}")
        if explain:
            _explain(vault, call)
    # A word of a script written without spaces is a substring scan (localvault/_search.py), not the index: its
    # worst case, a word in no prompt, reads every row of A. No target: reported so its cost is known.
    unspaced = "狐"
    assert library.list(search=unspaced).items == []
    samples = time_runs(lambda: library.list(search=unspaced), 3, warmup=1)
    print(f"  search a word of a script written without spaces ({unspaced!r}, in no prompt: every row of A read)")
    print(f"    {summary(samples)}  (no target; a substring scan of the user's rows, newest first)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="library rows for user A (B gets a tenth)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary vaults (default: system temp)")
    parser.add_argument("--keep", type=Path, default=None, help="create the vault here and keep it afterwards")
    parser.add_argument("--reuse", type=Path, default=None, help="skip inserting: time queries on a vault made with --keep")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per query (>= 200 for the figures)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw sqlite3 comparison")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN QUERY PLAN for each timed query")
    args = parser.parse_args(argv)
    if args.rows < 100:
        parser.error("--rows must be at least 100")
    print(f"bench_library: {machine_line()}")
    print(f"command: python bench/bench_library.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    data = Dataset(args.rows)
    scratch = Path(tempfile.mkdtemp(prefix="lv-bench-library-", dir=args.dir))
    try:
        if args.reuse is not None:
            vault = Vault.open(args.reuse, user_id=USER_A, readonly=False)
            found = vault.library.count()
            if found != args.rows:
                raise SystemExit(f"{args.reuse} holds {found:,} rows for user A, not --rows {args.rows:,}")
            print(f"reusing {args.reuse} ({found:,} rows for user A)")
        else:
            target = args.keep if args.keep is not None else scratch / "vault"
            vault = Vault.create(target, user_id=USER_A)
            insert(vault, None if args.no_raw else scratch / "raw.db", data)
            (scratch / "raw.db").unlink(missing_ok=True)
        sizes = sum(p.stat().st_size for p in vault.root.glob("vault.db*"))
        print(f"vault database: {sizes / 2**20:,.0f} MiB")
        queries(vault, data, args.runs, args.explain)
        vault.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_rss()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
