"""A migration, once shipped, never changes: a vault or server that applied it records its number and never
runs it again, so an edited text reaches new installs only and splits the old ones off for good (an upgrade
journey found vaults and servers of development commits stuck on earlier texts of SQLite migrations 2, 5 and 6
and server migrations 5, 6 and 7; none of those texts had shipped). Mend a shipped migration with a new number.

A new migration is pinned below when it is added (its file's sha256); its pin may follow its edits only until
the commit that ships it.
"""

from __future__ import annotations

import hashlib
from importlib import resources

SHIPPED = {
    "sqlite/0001_initial.sql": "3491336db0c2917e0a149a79b73c7f6cab67c0c2aaa3dc0ab9c2d5042fd1a4dd",
    "sqlite/0002_delete_after_last_edit.sql": "e5e496ef302cabcd1e9ca7591309276cedeb4d0368f642cb8730301cf341c813",
    "sqlite/0003_rejected_keep_their_time.sql": "3ff5328b22ca945f588fbf4d4bef008610308097d8fcde7d4e596abcd152357d",
    "sqlite/0004_expiry_years_of_four_digits.sql": "aac6bb57f6e5bf82a75f72f21d8a14934a03896a85e8dd34fff6d2e7e71c7f85",
    "sqlite/0005_write_intents.sql": "31645119defbfb55f9d4ad169da5a099f4738aac4c07dc8ba179fd30c3074396",
    "sqlite/0006_collection_release_unstamped.sql": "c675afe910adbeff3f185b4b2a2dc2c86c3d94341ba6ea21332500673a34149e",
    "sqlite/0007_outbox_by_row.sql": "7596a8040c2391085fbcc365a538b9328dbc3d25986b6212a23fbf30060166e5",
    "postgres/0001_tables.sql": "8172ddab3026c476c31ee91446d1163120d17cd440db4386409a958cda09c6f2",
    "postgres/0002_security.sql": "959890fea442bd64c35624d3ad184697da9870a529d5de6c3cc09ab13bee2814",
    "postgres/0003_storage.sql": "fa6b23d633903d95881b26604a47da8b9a8784e2dbc1cea666813415f3d02bf1",
    "postgres/0004_release_and_public_read.sql": "130bbfd749d5e9d165e1476ae077f1da46c2432454b045eda7f2cdd7c395bed0",
    "postgres/0005_narrow_grants.sql": "5a2bcc59007885ce610b99801a2c5d079e737be608d163beae58d2b24673ca3b",
    "postgres/0006_deleted_rows.sql": "99fc11872e9e4af7d8a86790addacf8b61b4f030370d05d4b1aa126371591be2",
    "postgres/0007_hold_deletions.sql": "bcd0374ea2f2d5bdd44cbd9c8d1f1a175d9752a12549ef3f7628b81c165c355c",
}


def _migrations() -> dict[str, bytes]:
    """Every numbered migration the package ships (the compat layer is applied whole each time: not one)."""
    root = resources.files("localvault") / "schema"
    return {f"{kind}/{entry.name}": entry.read_bytes() for kind in ("sqlite", "postgres")
            for entry in (root / kind).iterdir() if entry.name.endswith(".sql") and entry.name[:4].isdigit()}


def test_no_shipped_migration_was_edited() -> None:
    shipped = _migrations()
    edited = [name for name, digest in SHIPPED.items() if hashlib.sha256(shipped[name]).hexdigest() != digest]
    assert not edited, f"shipped migrations edited: {edited}; put the change in a new numbered migration instead"


def test_every_migration_is_pinned() -> None:
    unpinned = sorted(set(_migrations()) - set(SHIPPED))
    assert not unpinned, f"pin {unpinned} in SHIPPED (its sha256), so that it is never edited once shipped"
