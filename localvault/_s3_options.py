"""The storage options an ``s3://`` bucket's client (s3fs, botocore) takes, checked before they are stored.

A name s3fs does not know would be ignored without a word (a typo of ``endpoint_url``), and a value of the wrong
type would fail only at the first request, where it looks like the store being offline.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInputError

#: fsspec's own options, which s3fs hands to its base class, and the session's profile (the sync makes the session).
_BESIDES_S3FS = frozenset({"use_listings_cache", "listings_expiry_time", "max_paths", "skip_instance_cache", "profile"})
#: botocore settings that must be positive numbers.
_POSITIVE = ("connect_timeout", "read_timeout", "max_pool_connections")


def check_s3_options(options: Mapping[str, Any]) -> None:
    """InvalidInputError for an option s3fs does not take, or ``config_kwargs`` botocore cannot use.

    Checked only where s3fs is installed (the ``sync`` extra): without it no sync can run anyway.
    """
    try:
        from aiobotocore.config import AioConfig  # what s3fs makes of config_kwargs (botocore's, and aiohttp's)
        from s3fs import S3FileSystem
    except ImportError:
        return
    parameters = inspect.signature(S3FileSystem.__init__).parameters.values()
    known = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    known |= _BESIDES_S3FS
    for name in options:
        if name not in known:
            raise InvalidInputError(f"s3fs takes no storage option {name!r} (an s3:// bucket's options are "
                                    f"{', '.join(sorted(known))}); fix or remove it")
    client = options.get("client_kwargs")
    client = client if isinstance(client, Mapping) else {}
    # s3fs's names and aliases, and botocore's own in client_kwargs: half a pair stops botocore at the first
    # request, which a sync would call offline.
    has_key = any(n in options for n in ("key", "username")) or "aws_access_key_id" in client
    has_secret = any(n in options for n in ("secret", "password")) or "aws_secret_access_key" in client
    if has_key != has_secret:
        given, missing = ("key", "secret") if has_key else ("secret", "key")
        raise InvalidInputError(f"an s3:// bucket's {given} was given without its {missing}; give both (--key and "
                                "--secret), or neither to use the environment or ~/.aws")
    config = options.get("config_kwargs")
    if not isinstance(config, Mapping):  # (none; one not a table is refused first, by config.check_storage_options)
        return
    for name in _POSITIVE:
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise InvalidInputError(f"config_kwargs {name} must be a positive number, not {value!r}")
    try:
        AioConfig(**config)
    except Exception as exc:  # botocore's own check of names and values: TypeError, or one of its errors
        raise InvalidInputError(f"config_kwargs that botocore cannot use: {exc}") from None
