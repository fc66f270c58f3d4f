"""Sync: push a vault's library to PostgreSQL and an object bucket (needs the ``sync`` extra).

>>> from localvault.sync import Remote                                  # doctest: +SKIP
>>> vault.sync(Remote(database_url="postgresql://…", bucket_url="s3://user-library",
...                   storage_options={"client_kwargs": {"endpoint_url": "…"}}))  # doctest: +SKIP
"""

from .engine import SyncReport, push
from .remote import Remote
from .report import clock_warning
from .schema import SCHEMA_VERSION, SchemaReport, apply_schema
from .status import RejectedChange, SyncStatus, status

__all__ = ["Remote", "push", "status", "SyncReport", "SyncStatus", "RejectedChange", "apply_schema",
           "SchemaReport", "SCHEMA_VERSION", "clock_warning"]
