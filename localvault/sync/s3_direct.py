"""Single PUTs of small files, signed by botocore's SigV4 signer and sent on botocore's HTTP session, past s3fs.

Why: through s3fs every PUT takes aiobotocore's whole call path (event hooks, endpoint rules, request
serialisation, response parsing) and a hop to fsspec's event-loop thread and back, ~2 ms of this process's
CPU per PUT on the bench machine against ~1 ms here. With many small files that CPU, not the network, sets
the pace against a store on the same machine (bench/README.md, seventeenth session).

The request is botocore's own for ``put_object``: the URL botocore presigns for a key of the bucket (its
endpoint rules, addressing style and signing region), a SigV4 signature by botocore's ``S3SigV4Auth`` over
the payload's sha256 (the row's, checked before sending), the Content-Type and the ``x-amz-meta-sha256``
the s3fs path sends. It is used only with settings that mean the same here (:func:`direct_put_for`). Any
answer but 200, or any error, and the bucket's PUTs go through s3fs for the rest of the sync: its retries,
region redirects and errors are the ones the engine knows, and the file is sent again there.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

#: storage options (and of them, client and botocore config settings) whose meaning this path keeps; any other
#: (extra PUT arguments such as server-side encryption, requester pays, anonymous access, proxies, region
#: caches) leaves the PUTs to s3fs.
KNOWN_OPTIONS = frozenset({"key", "secret", "token", "client_kwargs", "config_kwargs", "session", "profile",
                           "use_listings_cache", "listings_expiry_time", "skip_instance_cache", "use_ssl",
                           "endpoint_url"})
KNOWN_CLIENT_SETTINGS = frozenset({"endpoint_url", "region_name", "verify", "use_ssl"})
KNOWN_CONFIG_SETTINGS = frozenset({"max_pool_connections", "connect_timeout", "read_timeout", "retries",
                                   "request_checksum_calculation", "response_checksum_validation",
                                   "signature_version", "s3"})
#: Frozen credentials are taken again after this many seconds (botocore refreshes expiring ones 10-15 min
#: before their end, so a frozen copy this young is always valid).
CREDENTIALS_SECONDS = 300.0
_PROBE_KEY = "localvault-direct-put-probe"


def direct_put_for(fs: Any, bucket: str, options: Mapping[str, Any]) -> DirectPut | None:
    """A :class:`DirectPut` for ``bucket`` on the s3fs filesystem ``fs``, or None when ``options`` hold a setting
    it does not keep the meaning of (the PUTs then go through s3fs, as every other request does)."""
    client_kwargs = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    if not (set(options) <= KNOWN_OPTIONS and set(client_kwargs) <= KNOWN_CLIENT_SETTINGS
            and set(config) <= KNOWN_CONFIG_SETTINGS and set(config.get("s3") or {}) <= {"addressing_style"}
            and config.get("signature_version", "s3v4") == "s3v4"):
        return None
    return DirectPut(fs, bucket, options)


class DirectPut:
    """PUTs of whole small objects to one bucket (see the module's note); thread-safe."""

    def __init__(self, fs: Any, bucket: str, options: Mapping[str, Any]) -> None:
        self._fs = fs
        self._bucket = bucket
        self._options = options
        self._lock = threading.Lock()
        self._static = None
        if options.get("key") and options.get("secret"):
            from botocore.credentials import Credentials

            self._static = Credentials(options["key"], options["secret"], options.get("token"))
        self._frozen: Any = None
        self._frozen_at = -math.inf
        self._prefix: str | None = None  # the URL of a key, but the key
        self._region = ""
        self._user_agent = _user_agent()
        self._http: Any = None  # botocore's URLLib3Session, made with the first PUT (its errors are a PUT's)
        #: Set once this path failed (or cannot be used): every later PUT goes through s3fs.
        self.off = False

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> str | None:
        """Send ``data`` as the object ``key`` (a key in the bucket); the ETag the store answered with, or None
        when this path did not store it (the caller sends it through s3fs)."""
        if self.off:
            return None
        try:
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest

            url, region, credentials = self._url(key), self._region, self._credentials()
            request = AWSRequest("PUT", url, data=data, headers={
                "Content-Type": content_type, "x-amz-meta-sha256": sha256, "X-Amz-Content-SHA256": sha256,
                "User-Agent": self._user_agent})
            S3SigV4Auth(credentials, "s3", region).add_auth(request)
            answer = self._http.send(request.prepare())  # (set up by _url)
        except Exception as exc:  # anything: s3fs sends it, and raises, retries or redirects as it knows how
            log.debug("direct PUT of %s failed (%s: %s); PUTs go through s3fs from now on", key,
                      type(exc).__name__, exc)
            self.off = True
            return None
        if answer.status_code != 200:
            log.debug("direct PUT of %s answered %s; PUTs go through s3fs from now on", key, answer.status_code)
            self.off = True
            return None
        return str(answer.headers.get("ETag", ""))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def _url(self, key: str) -> str:
        from urllib.parse import quote

        with self._lock:
            if self._prefix is None:
                from botocore.httpsession import URLLib3Session

                config = self._options.get("config_kwargs") or {}
                prefix, self._region = self._presigned_prefix()
                self._http = URLLib3Session(verify=self._verify(), max_pool_connections=int(
                    config.get("max_pool_connections", 10)), timeout=(config.get("connect_timeout", 60),
                                                                        config.get("read_timeout", 60)))
                self._prefix = prefix
        return self._prefix + quote(key, safe="/~")

    def _presigned_prefix(self) -> tuple[str, str]:
        """The URL botocore would send a PUT of a key to, without the key, and the region it signs for."""
        from fsspec.asyn import sync

        client = self._fs.s3
        url = sync(self._fs.loop, client.generate_presigned_url, "put_object",
                   Params={"Bucket": self._bucket, "Key": _PROBE_KEY}, ExpiresIn=60)
        parts = urlsplit(url)
        if not parts.path.endswith("/" + _PROBE_KEY) or parts.scheme not in ("http", "https"):
            raise ValueError(f"botocore presigns {parts.scheme}://{parts.netloc}{parts.path} for a key")
        # The region a SigV4 presign signs for is the one PUTs are signed for; a SigV2 presign (botocore's
        # default for presigned S3 URLs) tells none, and PUTs are signed for the client's region.
        scope = parse_qs(parts.query).get("X-Amz-Credential", [""])[0].split("/")
        region = scope[2] if len(scope) == 5 else client.meta.region_name
        proxies = (self._options.get("config_kwargs") or {}).get("proxies")
        from botocore.utils import get_environ_proxies

        if proxies or get_environ_proxies(url):
            raise ValueError("the store is reached through a proxy")
        return f"{parts.scheme}://{parts.netloc}{parts.path[:-len(_PROBE_KEY)]}", region

    def _credentials(self) -> Any:
        if self._static is not None:
            return self._static
        with self._lock:
            if time.monotonic() - self._frozen_at > CREDENTIALS_SECONDS:
                from fsspec.asyn import sync

                self._fs.s3  # noqa: B018  (s3fs sets its session up on first use)
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
        if verify is None and (session := self._options.get("session")) is not None:
            verify = session.get_config_variable("ca_bundle")
        if verify is None:
            verify = os.environ.get("AWS_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE")
        return True if verify is None else verify


def _user_agent() -> str:
    import botocore

    from .. import __version__

    return f"localvault/{__version__} botocore/{botocore.__version__}"
