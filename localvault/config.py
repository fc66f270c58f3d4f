"""Settings: the one place that reads the environment, and localvault.toml.

``localvault.toml`` in the vault folder holds the default user id and the sync
remote. It is written atomically and readable only by its owner (it may hold
storage keys).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import tomli_w
from platformdirs import user_data_dir

from ._s3_options import check_s3_options
from .errors import InvalidInputError, StorageError, VaultCorruptError
from .models import check_unicode, check_uuid

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "localvault.toml"


def default_vault_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$LOCALVAULT_PATH`` if set, else the platform's user data folder."""
    env = os.environ if environ is None else environ
    if env.get("LOCALVAULT_PATH"):
        return Path(env["LOCALVAULT_PATH"]).expanduser()
    return Path(user_data_dir("localvault", appauthor=False)) / "vault"


@dataclass
class RemoteConfig:
    """Where ``localvault sync`` pushes to."""

    database_url: str
    bucket_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def checked(cls, database_url: str, bucket_url: str, storage_options: Mapping[str, Any] | None = None, *,
                s3_options: bool = True) -> RemoteConfig:
        """Settings that can work, or InvalidInputError (see the ``check_*`` functions below).

        Not done on load: settings stored before these checks existed must
        not keep the vault from opening. ``s3_options``: also judge an s3://
        bucket's options by what s3fs and its client take.
        """
        check_storage_options(storage_options or {})
        options = dict(storage_options or {})
        bucket_url = check_bucket_url(bucket_url)
        if s3_options and bucket_url.startswith(("s3://", "s3a://")):
            check_s3_options(options)
        return cls(check_database_url(database_url), bucket_url, options)

    def redacted(self) -> dict[str, Any]:
        """These settings with every secret replaced by ``***``: safe to print or log."""
        return {"database_url": redact_database_url(self.database_url), "bucket_url": redact_url(self.bucket_url),
                "storage_options": _redact_options(self.storage_options)}

    def __repr__(self) -> str:
        return f"RemoteConfig({self.redacted()!r})"  # a traceback or a log line never shows a secret


_DATABASE_URL_FORM = "postgresql://user:password@host:port/dbname"
#: libpq's sslmode values.
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: Storage options shown as they are by :meth:`RemoteConfig.redacted`; any other is a possible secret.
_SHOWN_OPTIONS = frozenset({"key", "anon", "profile", "endpoint_url", "region_name", "use_ssl", "requester_pays",
                            "version_aware", "default_block_size", "use_listings_cache", "listings_expiry_time",
                            "max_concurrency", "config_kwargs", "client_kwargs", "project", "account_name"})
_SHOWN_CLIENT_OPTIONS = frozenset({"endpoint_url", "region_name", "verify", "use_ssl", "api_version"})
_PORTS = re.compile(r"(\d+(,\d*)*)?")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/?#@:\s]*):[^/?#@\s]*@")


def redact_url(text: str) -> str:
    """A URL with the password of its ``user:password@`` part as ``***``."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


class RemotePlaces(Protocol):
    """What names a remote's database and bucket: a :class:`RemoteConfig`, or a ``sync.Remote``."""

    database_url: str
    bucket_url: str
    storage_options: dict[str, Any]


def remote_identity(remote: RemotePlaces) -> str:
    """Where a remote's rows and objects live (not how one logs in: a new password is the same remote): the
    database's host, port and name, the bucket and its endpoint. A sync to another remote sends everything."""
    params = database_params(remote.database_url)
    if params is None:
        database = redact_database_url(remote.database_url)
    else:  # what the URL leaves out, libpq takes from PGHOST, PGPORT, PGDATABASE, PGUSER, then its defaults
        def given(name: str, variable: str) -> str:
            return params.get(name) or os.environ.get(variable, "")

        user = given("user", "PGUSER")
        database = f"{given('host', 'PGHOST')}:{given('port', 'PGPORT') or '5432'}/{given('dbname', 'PGDATABASE') or user}"
    endpoint = endpoint_of(remote.storage_options or {}) or ""
    return f"{database} {remote.bucket_url.rstrip('/')} {str(endpoint).rstrip('/')}".rstrip()


def redact_database_url(url: str) -> str:
    """A database URL or ``key=value`` string as libpq reads it, without any password: safe to print.

    Parsed the way libpq parses it (``password``, ``sslpassword`` and the
    password part of the URL are all passwords to it); what cannot be parsed
    is shown as ``postgresql://…``.
    """
    params = database_params(url)
    if params is None:
        return "postgresql://…"
    secret = params.pop("password", None) is not None
    secret = params.pop("sslpassword", None) is not None or secret
    user = params.pop("user", "")
    host, port, dbname = params.pop("host", ""), params.pop("port", ""), params.pop("dbname", "")
    if host.startswith("/"):  # a socket folder reads better as ?host=
        params["host"], host = host, ""
    credentials = f"{quote(user, safe='')}{':***' if secret else ''}@" if user or secret else ""
    host = ",".join(f"[{h}]" if ":" in h else h for h in host.split(","))
    text = f"postgresql://{credentials}{host}{':' + port if port else ''}/{quote(dbname, safe='')}"
    if params:
        text += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(params.items()))
    return text


def database_params(url: str) -> dict[str, str] | None:
    """A database URL or ``key=value`` string's parameters as libpq reads them; None if it cannot be read,
    or where libpq would take a password for the host or port (``postgres:pw`` with ``@host`` left out)."""
    params = _libpq_reading(url)
    if params is None or not _PORTS.fullmatch(params.get("port", "")) or "@" in params.get("host", ""):
        return None
    return params


def _libpq_reading(url: str) -> dict[str, str] | None:
    """A database URL or ``key=value`` string's parameters as libpq reads them, unchecked; None if it cannot
    be read, or without the sync extra (psycopg)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return None
    try:
        return {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except Exception:  # psycopg.ProgrammingError and kin: not a connection string
        return None


def _redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, value in options.items():
        if name not in _SHOWN_OPTIONS:
            shown[name] = "***"
        elif name == "client_kwargs" and isinstance(value, Mapping):
            shown[name] = {k: _redact_value(v) if k in _SHOWN_CLIENT_OPTIONS else "***" for k, v in value.items()}
        else:
            shown[name] = _redact_value(value)
    return shown


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def check_database_url(url: str) -> str:
    """A PostgreSQL URL (or ``key=value`` DSN) that libpq will read as meant; InvalidInputError otherwise.

    The message never repeats the URL: it may hold a password.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"the database URL is empty; give {_DATABASE_URL_FORM}")
    url = check_unicode(url.strip(), "the database URL")
    if "://" not in url:
        if "=" in url:  # a key=value connection string: libpq reads it; what it could never use is refused
            _check_libpq_settings(url)
            return url
        raise InvalidInputError(f"the database URL has no scheme; give {_DATABASE_URL_FORM}")
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidInputError(f"the database URL must start with postgresql:// (it starts with {scheme[:20]}://); "
                                f"give {_DATABASE_URL_FORM}")
    authority = rest.split("?", 1)[0]
    if "@" in authority:
        credentials = authority[: authority.rfind("@")]
        if any(c in credentials for c in "@/ #?"):
            raise InvalidInputError("the database URL's user or password holds '@', '/', '#', '?' or a space: "
                                    "percent-encode them (@ as %40, / as %2F, # as %23, ? as %3F, space as %20)")
    if any(c.isspace() for c in url):
        raise InvalidInputError("the database URL holds a space or a line break: percent-encode a space as %20, "
                                "and remove a line break")
    hosts = authority.rsplit("@", 1)[-1].split("/", 1)[0]
    for host in hosts.split(","):
        port = host.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in host.rsplit("]", 1)[-1] else ""
        if port and not port.isdigit():
            raise InvalidInputError("the database URL's port is not a number (is '@host' missing after the "
                                    f"password?); give {_DATABASE_URL_FORM}")
    _check_libpq_settings(url)
    return url


def _check_libpq_settings(url: str) -> None:
    """InvalidInputError for a port (in the host part, ``?port=`` or ``port=``) that is not one from 1 to 65535,
    or an sslmode libpq does not know. The port is not repeated: with ``@host`` left out, it is the password."""
    params = _libpq_reading(url)
    if params is None:  # (no sync extra: no sync will read it; or unreadable: the checks before, or libpq, say why)
        return
    for port in params.get("port", "").split(","):
        if port and (not port.isdigit() or not 0 < int(port) < 65536):
            raise InvalidInputError("the database URL's port is not one from 1 to 65535 (is '@host' missing after "
                                    f"the password?); give {_DATABASE_URL_FORM}")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSL_MODES:
        raise InvalidInputError(f"sslmode={sslmode[:20]!r} is not one PostgreSQL knows; use one of "
                                f"{', '.join(_SSL_MODES)}")


def check_bucket_url(url: str) -> str:
    """A bucket URL with a scheme fsspec knows (``s3://name``, ``gs://…``, ``file:///…``) or an absolute path."""
    import fsspec

    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError("the bucket URL is empty; give e.g. s3://user-library")
    url = check_unicode(url.strip(), "the bucket URL")
    if (one_slash := re.match(r"([a-z][a-z0-9+.-]*):/(?!/)", url)) and len(one_slash.group(1)) > 1:
        scheme, rest = one_slash.group(1), url[one_slash.end():]  # (one letter and a colon: a Windows drive)
        meant = f"{scheme}:///{rest}" if scheme in ("file", "local") else f"{scheme}://{rest}"
        raise InvalidInputError(f"the bucket URL {redact_url(url)!r} has one slash after {scheme}:; did you mean "
                                f"{redact_url(meant)}?")
    if "://" not in url:
        if os.path.isabs(url):
            return url
        if url.startswith((".", "~")) or "/" in url:  # a folder meant, given relative
            raise _relative_folder(f"the bucket {url!r} is", url)
        raise InvalidInputError(f"the bucket {url!r} has no scheme: give a URL such as s3://{url.strip('/') or 'bucket'}"
                                " (or file:///absolute/folder for a folder on this machine)")
    protocol, rest = url.split("://", 1)
    if protocol in ("file", "local") and not os.path.isabs(rest):
        raise _relative_folder(f"the bucket URL {url!r} names", rest)
    if protocol in ("http", "https"):
        raise _web_address(redact_url(url))
    if protocol not in fsspec.available_protocols():
        raise InvalidInputError(f"the bucket URL's scheme {protocol}:// is not one fsspec knows; use s3://, gs://, "
                                "az://, file:// …")
    if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs") and not rest.split("/", 1)[0]:
        raise InvalidInputError(f"the bucket URL {url!r} names no bucket; give {protocol}://<bucket name>")
    return url


def _web_address(url: str) -> InvalidInputError:
    """The error for a bucket given as a web address (``url``, its password hidden): fsspec reads one as web
    pages, which a sync cannot list reliably nor delete from (an S3 endpoint and its bucket pasted as one URL)."""
    protocol, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    path = path.strip("/")
    # One part after the host: that part is the bucket; more (Supabase's …/storage/v1/s3): the URL is the endpoint.
    bucket, endpoint = (path, f"{protocol}://{host}") if path and "/" not in path else ("<bucket name>", url)
    return InvalidInputError(f"the bucket URL {url!r} is a web address, which a sync cannot list or delete from; "
                             f"for an S3-compatible store (Supabase Storage, MinIO, R2…) give the bucket and its "
                             f"endpoint apart: --bucket s3://{bucket} --endpoint-url {endpoint}")


def _relative_folder(what: str, folder: str) -> InvalidInputError:
    return InvalidInputError(f"{what} a relative folder: give it whole, such as "
                             f"file://{os.path.abspath(os.path.expanduser(folder))} (a relative one would move with "
                             "the folder each command runs in)")


def check_storage_options(options: Mapping[str, Any]) -> None:
    """The settings an S3 client cannot use, caught before any sync tries them."""
    if not isinstance(options, Mapping):
        raise InvalidInputError(f"storage options must be a dict of fsspec options, not {type(options).__name__}")
    _check_option_text(options)
    for name in ("client_kwargs", "config_kwargs"):  # (s3fs reads them as dicts, at every sync and status)
        if options.get(name) is not None and not isinstance(options[name], Mapping):
            raise InvalidInputError(f"the storage option {name} must be a table of settings (in Python a dict, "
                                    f"such as {{'endpoint_url': 'https://…'}}), not {options[name]!r}")
    endpoint = endpoint_of(options)
    if endpoint is not None and not (isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))):
        raise InvalidInputError(f"the endpoint URL {endpoint!r} must start with http:// or https://")


def endpoint_of(options: Mapping[str, Any]) -> Any:
    """The endpoint URL of storage options (``client_kwargs.endpoint_url``, or s3fs's ``endpoint_url``), unchecked."""
    client = options.get("client_kwargs")
    return (client.get("endpoint_url") if isinstance(client, Mapping) else None) or options.get("endpoint_url")


def _check_option_text(value: Any) -> None:
    """Every text in the options (keys and values, nested) is storable Unicode."""
    if isinstance(value, str):
        check_unicode(value, "a storage option")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_option_text(key)
            _check_option_text(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_option_text(item)


@dataclass
class VaultConfig:
    """Contents of localvault.toml."""

    user_id: str
    remote: RemoteConfig | None = None
    #: Why the file's [remote] table could not be read (then ``remote`` is None); a sync raises it.
    remote_problem: str | None = None

    @classmethod
    def load(cls, folder: Path) -> VaultConfig:
        path = folder / CONFIG_NAME
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VaultCorruptError(f"{path} is missing; recreate it with one line: user_id = \"<the vault user's "
                                    "id>\" (the user_id column of the vault's rows)") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise VaultCorruptError(f"{path} is not valid TOML ({exc}); fix or recreate it") from None
        except OSError as exc:  # a folder in its place, no permission, a disk error
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}; check it and its permissions") from None
        if not isinstance(data.get("user_id"), str):
            raise VaultCorruptError(f"{path} has no user_id text; add a line user_id = \"<uuid>\"")
        try:
            user_id = check_uuid(data["user_id"], "user id")
        except InvalidInputError:
            raise VaultCorruptError(f"{path}: user_id {data['user_id'][:80]!r} is not a UUID; put back the vault "
                                    "user's id (user_id = \"<uuid>\")") from None
        remote = data.get("remote")
        problem = None
        if remote is not None and not (isinstance(remote, dict) and isinstance(remote.get("database_url"), str)
                                       and isinstance(remote.get("bucket_url"), str)
                                       and isinstance(remote.get("storage_options", {}), dict)):
            # Only a sync needs it: the vault opens, and 'remote set' (which writes a whole new file) mends it.
            problem = (f"{path}: the [remote] table needs database_url and bucket_url (text) and an optional "
                       "[remote.storage_options] table; fix it or set it again with 'localvault remote set'")
            remote = None
        return cls(
            user_id=user_id,
            remote_problem=problem,
            remote=RemoteConfig(
                database_url=remote["database_url"],
                bucket_url=remote["bucket_url"],
                storage_options=dict(remote.get("storage_options", {})),
            )
            if remote
            else None,
        )

    def save(self, folder: Path) -> None:
        """Write the file atomically, mode 0600; InvalidInputError (nothing written) for a value TOML cannot hold."""
        from ._durable import atomic_write_bytes

        atomic_write_bytes(folder / CONFIG_NAME, self.as_toml(), mode=0o600)

    def as_toml(self) -> bytes:
        """The file's contents; InvalidInputError for a value TOML cannot hold (or would not read back the same)."""
        data: dict[str, Any] = {"user_id": self.user_id}
        if self.remote is not None:
            data["remote"] = {"database_url": self.remote.database_url, "bucket_url": self.remote.bucket_url}
            if self.remote.storage_options:
                data["remote"]["storage_options"] = dict(self.remote.storage_options)
        try:
            text = tomli_w.dumps(data)
            # What cannot be read back must not replace good settings (compared as JSON: NaN is NaN, a
            # tuple a list).
            written_back = _as_json(tomllib.loads(text)) == _as_json(data)
        except (TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInputError(f"these settings cannot be saved as TOML ({exc}); use text, numbers, booleans, "
                                    "lists or tables") from None
        if not written_back:
            raise InvalidInputError("these settings do not read back the same from TOML; use text, numbers, booleans, "
                                    "lists or tables")
        return ("# localvault vault settings\n" + text).encode()


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
