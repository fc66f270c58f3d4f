"""What an object store's errors mean for a sync: a lost connection (retried, then offline), settings no retry
fixes (credentials, AWS config), or the store's refusal for good (a 4xx; a folder bucket's full disk)."""

from __future__ import annotations

import errno
import functools

#: Error codes of a store that is busy or hiccuped, not refusing: worth another try. botocore's own transient and
#: throttling codes (retries/standard.py), those its S3 policy and s3fs retry (a body damaged on the way), and
#: S3's "a conflicting operation is under way".
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "OperationAborted", "TooManyRequests",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "EC2ThrottledException",
    "BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody",
})


@functools.cache
def network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions object stores raise for a lost connection that are not OSError (botocore's, aiohttp's).

    Imported when first asked (after such an error, so the libraries are loaded already): a sync to a
    folder bucket, or ``status``, does not load them for nothing.
    """
    found: list[type[BaseException]] = []
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        found += [BotoConnectionError, HTTPClientError]  # refused, timed out, closed, cut short
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:  # the connection's errors, not an HTTP answer's (a 403 from an https:// store is not offline)
        from aiohttp import ClientConnectionError, ClientPayloadError

        found += [ClientConnectionError, ClientPayloadError]
    except ImportError:  # pragma: no cover - s3fs brings aiohttp
        pass
    return tuple(found)


@functools.cache
def http_answer_errors() -> tuple[type[BaseException], ...]:
    """aiohttp's error for an HTTP answer that is no success, from an fsspec filesystem built on aiohttp: the
    answer's status, not the connection, says whether the store refused (4xx) or was busy (5xx). (An
    ``http(s)://`` bucket, which raised it first, is refused by :func:`localvault.config.check_bucket_url` now.)
    Imported when first asked, as :func:`network_errors`."""
    try:
        from aiohttp import ClientResponseError
    except ImportError:  # pragma: no cover - s3fs brings aiohttp
        return ()
    return (ClientResponseError,)


#: What to do about a :func:`settings_errors` error.
SETTINGS_HINT = ("give --key and --secret (and --region) to 'localvault remote set', or fix them where AWS tools look "
                 "($AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, ~/.aws/credentials and ~/.aws/config, --option "
                 "profile=NAME of an existing profile)")


@functools.cache
def settings_errors() -> tuple[type[BaseException], ...]:
    """botocore's errors for credentials or a configuration it cannot use (none found, an unknown profile, a
    config file it cannot read): no retry fixes these. Imported when first asked, as :func:`network_errors`."""
    try:
        from botocore import exceptions
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return ()
    names = ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "ConfigNotFound", "ConfigParseError",
             "InvalidConfigError", "UnknownCredentialError", "NoRegionError", "CredentialRetrievalError",
             "TokenRetrievalError", "SSOError", "SSOTokenLoadError", "UnauthorizedSSOTokenError", "LoginError",
             "LoginTokenLoadError", "LoginRefreshRequired", "NoAuthTokenError", "UnknownTokenProviderError",
             "InvalidRegionError", "UnknownRegionError")
    return tuple(getattr(exceptions, name) for name in names if hasattr(exceptions, name))


#: What a folder bucket's disk answers that no retry fixes: full, read-only, over quota, a file too big for it.
_FOLDER_REFUSALS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG})


def store_refusal(exc: BaseException) -> str | None:
    """The store's reason when ``exc`` is its refusal for good (no retry helps), else None.

    s3fs turns an S3 error answer into a plain OSError whose cause is
    botocore's ClientError: a 4xx (EntityTooLarge, InvalidArgument,
    MetadataTooLarge…) is a refusal; a 5xx, a throttling or timeout code is
    the store being busy (retried). An HTTP store's answer (aiohttp's
    ClientResponseError) is judged by its status alike. A folder bucket's
    full or read-only disk is a refusal too.
    """
    response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code in TRANSIENT_CODES or status in (408, 429) or not 400 <= status < 500:  # 5xx: busy
            return None
        return f"{code or status}: {error.get('Message') or ''}".strip().rstrip(":")
    if isinstance(exc, http_answer_errors()):
        status = int(getattr(exc, "status", 0) or 0)
        if status in (408, 429) or not 400 <= status < 500:  # busy, or no status at all: retried
            return None
        message = str(getattr(exc, "message", "") or "").strip()  # (aiohttp's may run over lines: the first)
        return f"{status}: {message.splitlines()[0] if message else ''}".strip().rstrip(":")
    if isinstance(exc, OSError) and exc.errno in _FOLDER_REFUSALS:
        return exc.strerror or str(exc)
    return None
