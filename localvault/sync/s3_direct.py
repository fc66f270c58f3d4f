"""Single PUTs of small files, signed by botocore's SigV4 signer and sent on botocore's HTTP session, past s3fs.

Why: through s3fs every PUT takes aiobotocore's whole call path (event hooks, endpoint rules, request
serialisation, response parsing) and a hop to fsspec's event-loop thread and back, ~2 ms of this process's
CPU per PUT on the bench machine against ~1 ms here. With many small files that CPU, not the network, sets
the pace against a store on the same machine (bench/README.md, seventeenth session).

The first PUT of a bucket goes through s3fs, and botocore's request for it is looked at just before it is
sent: its URL (endpoint rules, addressing style, regional or FIPS host), the region and service it is signed
for, and its headers. Later PUTs are that request for another key: signed by botocore's ``S3SigV4Auth``
(the payload's sha256 is the one computed from the bytes sent and checked against the row), sent on
botocore's ``URLLib3Session`` with the client's timeouts and pool size and botocore's TLS verification.

Used only where that is the same request: with the storage options s3fs was made with (fsspec's own
configuration included) holding only settings this path keeps (:func:`direct_put_for`), and while
botocore's PUT carries no header this one would not (a checksum, server-side encryption added by a
session's handler, …). Any answer but 200, or any error, and the file goes again through s3fs, and so does
every later PUT of that sync: retries, redirects and error messages stay botocore's and s3fs's.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from .s3_client import store_socket

log = logging.getLogger(__name__)

#: storage options (and of them, client and botocore config settings) whose meaning this path keeps; any other
#: (extra PUT arguments such as server-side encryption or ACLs, requester pays, anonymous access, proxies,
#: region caches) leaves the PUTs to s3fs.
KNOWN_OPTIONS = frozenset({"key", "secret", "token", "client_kwargs", "config_kwargs", "session", "profile",
                           "use_listings_cache", "listings_expiry_time", "skip_instance_cache", "use_ssl",
                           "endpoint_url", "version_aware", "default_block_size", "max_concurrency",
                           "default_fill_cache", "default_cache_type"})
#: Options whose meaning this path keeps while they are false.
KNOWN_IF_FALSE = frozenset({"anon", "requester_pays"})
KNOWN_CLIENT_SETTINGS = frozenset({"endpoint_url", "region_name", "verify", "use_ssl"})
KNOWN_CONFIG_SETTINGS = frozenset({"max_pool_connections", "connect_timeout", "read_timeout", "retries",
                                   "request_checksum_calculation", "response_checksum_validation",
                                   "signature_version", "s3"})
#: Headers of botocore's PUT that this path sends too (or that say nothing of the object stored).
SAME_HEADERS = frozenset({"host", "user-agent", "amz-sdk-invocation-id", "amz-sdk-request", "x-amz-date",
                          "x-amz-content-sha256", "x-amz-security-token", "authorization", "content-type",
                          "content-length", "x-amz-meta-sha256"})
#: Frozen credentials are taken again after this many seconds (botocore refreshes expiring ones 10-15 min
#: before their end, so a frozen copy this young is always valid).
CREDENTIALS_SECONDS = 300.0


def direct_put_for(fs: Any, bucket: str) -> DirectPut | None:
    """A :class:`DirectPut` for ``bucket`` on the s3fs filesystem ``fs``, or None when the options ``fs`` was
    made with hold a setting this path does not keep the meaning of (its PUTs then go through s3fs)."""
    options = fs.storage_options  # (fsspec's configuration merged in)
    client_kwargs = options.get("client_kwargs") or {}
    config = dict(options.get("config_kwargs") or {})
    if config.get("connector_args") == {"socket_factory": store_socket}:  # (tune_s3's, for aiohttp: a send here
        del config["connector_args"]  # is bounded by urllib3's socket timeout)
    if not (set(options) <= KNOWN_OPTIONS | {k for k in KNOWN_IF_FALSE if not options.get(k, True)}
            and set(client_kwargs) <= KNOWN_CLIENT_SETTINGS
            and set(config) <= KNOWN_CONFIG_SETTINGS and set(config.get("s3") or {}) <= {"addressing_style"}
            and config.get("signature_version", "s3v4") == "s3v4"):
        return None
    return DirectPut(fs, bucket)


@functools.cache
def _signer_class() -> type:
    """botocore's ``S3SigV4Auth``, told the payload's sha256 (it would hash the body again)."""
    from botocore.auth import S3SigV4Auth

    class KnownPayloadAuth(S3SigV4Auth):  # type: ignore[misc]
        def __init__(self, credentials: Any, region: str, payload_sha256: str) -> None:
            super().__init__(credentials, "s3", region)
            self._payload_sha256 = payload_sha256

        def payload(self, request: Any) -> str:
            return self._payload_sha256

    return KnownPayloadAuth


class DirectPut:
    """PUTs of whole small objects to one bucket (see the module's note); thread-safe."""

    def __init__(self, fs: Any, bucket: str) -> None:
        self._fs = fs
        self._bucket = bucket
        options: Mapping[str, Any] = fs.storage_options  # what s3fs was made with
        self._options = options
        self._lock = threading.Lock()
        self._static = None
        if options.get("key") and options.get("secret"):
            from botocore.credentials import Credentials

            self._static = Credentials(options["key"], options["secret"], options.get("token"))
        self._frozen: Any = None
        self._frozen_at = -math.inf
        self._prefix: str | None = None  # the URL of a key, but the key (learnt from the first PUT)
        self._region = ""
        self._http: Any = None  # botocore's URLLib3Session
        self._user_agent = _user_agent()
        #: Set once this path failed or cannot be used: every later PUT goes through s3fs.
        self.off = False

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> str | None:
        """Send ``data`` (whose sha256 is ``sha256``) as the object ``key`` of the bucket; the ETag the store
        answered with, or None when the caller is to send it through s3fs.

        The first call sends through s3fs itself, and raises as s3fs does."""
        if self._prefix is None and not self.off:
            with self._lock:
                if self._prefix is None and not self.off:
                    return self._put_and_learn(key, data, sha256, content_type)
        prefix = self._prefix
        if self.off or prefix is None:
            return None
        try:
            from botocore.awsrequest import AWSRequest

            credentials = self._credentials()
            request = AWSRequest("PUT", prefix + quote(key, safe="/~"), data=data, headers={
                "Content-Type": content_type, "x-amz-meta-sha256": sha256, "User-Agent": self._user_agent})
            _signer_class()(credentials, self._region, sha256).add_auth(request)
            answer = self._http.send(request.prepare())
        except Exception as exc:  # anything: s3fs sends it, and raises, retries or redirects as it knows how
            self._turn_off(f"a PUT failed ({type(exc).__name__}: {exc})")
            return None
        if answer.status_code != 200:
            self._turn_off(f"the store answered a PUT with {answer.status_code}")
            return None
        return str(answer.headers.get("ETag", ""))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def _turn_off(self, why: str) -> None:
        if not self.off:
            log.info("PUTs to %s go through s3fs for the rest of this sync: %s", self._bucket, why)
        self.off = True

    def _put_and_learn(self, key: str, data: bytes, sha256: str, content_type: str) -> str:
        """Send through s3fs, and learn from botocore's request where and how later PUTs go."""
        client = self._fs.s3
        seen: list[Any] = []
        name = quote(key, safe="/~")

        def look(request: Any, **_kwargs: Any) -> None:
            # (The client may be another sync's too, in this process: its PUT of the same key to another bucket
            # passes here as well.)
            if self._names_bucket(request.url, name):
                seen.append(request)

        handler = f"localvault-direct-put-{id(self)}"
        client.meta.events.register_first("before-send.s3.PutObject", look, unique_id=handler)
        try:
            answer = self._fs.call_s3("put_object", Bucket=self._bucket, Key=key, Body=data,
                                      ContentType=content_type, Metadata={"sha256": sha256})
        finally:
            client.meta.events.unregister("before-send.s3.PutObject", unique_id=handler)
        try:
            self._learn(seen[-1] if seen else None, name)  # (after a PUT that failed, the next one learns)
        except Exception as exc:
            self._turn_off(str(exc))
        return str(answer.get("ETag", ""))

    def _names_bucket(self, url: str, name: str) -> bool:
        """Whether ``url`` is that of object ``name`` of this bucket: path style (the bucket the path's folder
        before the key), or virtual-host style (the bucket the first label of the client's endpoint host)."""
        parts = urlsplit(url)
        if parts.path.endswith(f"/{quote(self._bucket)}/{name}"):
            return True
        endpoint = urlsplit(self._fs.s3.meta.endpoint_url).netloc
        return parts.netloc == f"{self._bucket}.{endpoint}" and parts.path.endswith(f"/{name}")

    def _learn(self, request: Any, name: str) -> None:
        from botocore.httpsession import URLLib3Session
        from botocore.utils import get_environ_proxies

        if request is None or not self._names_bucket(request.url, name):
            raise ValueError("botocore's PUT was not seen")
        url = urlsplit(request.url)
        scope = str(request.headers.get("Authorization", "")).partition("Credential=")[2].split(",")[0].split("/")
        others = {str(h).lower() for h in request.headers} - SAME_HEADERS
        if url.query or not url.path.endswith("/" + name) or url.scheme not in ("http", "https"):
            raise ValueError(f"botocore PUTs to {url.scheme}://{url.netloc}{url.path}?{url.query}")
        if len(scope) != 5 or scope[3] != "s3":
            raise ValueError("botocore's PUT is not signed with SigV4 for s3")
        if others:
            raise ValueError(f"botocore's PUT carries {', '.join(sorted(others))}")
        if get_environ_proxies(request.url):
            raise ValueError("the store is reached through a proxy")
        config = self._fs.s3.meta.config
        self._http = URLLib3Session(verify=self._verify(), max_pool_connections=config.max_pool_connections,
                                    timeout=(config.connect_timeout, config.read_timeout))
        self._region = scope[2]
        self._prefix = request.url[:-len(name)]

    def _credentials(self) -> Any:
        if self._static is not None:
            return self._static
        with self._lock:
            if time.monotonic() - self._frozen_at > CREDENTIALS_SECONDS:
                from fsspec.asyn import sync

                found = sync(self._fs.loop, self._fs.session.get_credentials)
                if found is None:
                    raise ValueError("no credentials")
                self._frozen = sync(self._fs.loop, found.get_frozen_credentials)
                self._frozen_at = time.monotonic()
            return self._frozen

    def _verify(self) -> bool | str:
        """TLS verification as botocore's client decides it: the client setting, the profile's or
        $AWS_CA_BUNDLE's ca_bundle, $REQUESTS_CA_BUNDLE, else on with botocore's CA bundle."""
        verify = (self._options.get("client_kwargs") or {}).get("verify")
        if verify is None:
            verify = self._fs.session.get_config_variable("ca_bundle")
        if verify is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE")
        return True if verify is None else verify


def _user_agent() -> str:
    import botocore

    from .. import __version__

    return f"localvault/{__version__} botocore/{botocore.__version__}"
