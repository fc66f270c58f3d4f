"""Small files' PUTs signed by botocore and sent past s3fs (localvault.sync.s3_direct), against the suite's moto
server: used with plain settings, checked by the store's own signature check, and handing over to s3fs when the
settings or the store's answer call for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import s3fs
from PIL import Image

from localvault import Vault
from localvault.sync import Remote


@pytest.fixture
def s3fs_puts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The put_object calls that go through s3fs."""
    calls: list[dict[str, Any]] = []
    real = s3fs.S3FileSystem.call_s3

    def counted(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "put_object":
            calls.append(kwargs)
        return real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", counted)
    return calls


def _fill(vault: Vault, folder: Path, count: int, start: int = 0) -> list[Any]:
    assets = []
    for n in range(start, start + count):
        path = folder / f"direct{n}.png"
        Image.new("RGB", (16, 16), (n * 40 % 256, 7, 200)).save(path)
        assets.append(vault.library.add(path, prompt=f"direct {n}", seed=n))
    return assets


def _client(options: dict[str, Any], **keys: str) -> Any:
    return boto3.client("s3", endpoint_url=options["client_kwargs"]["endpoint_url"], region_name="us-east-1",
                        aws_access_key_id=keys.get("key", options["key"]),
                        aws_secret_access_key=keys.get("secret", options["secret"]))


def test_small_files_go_up_past_s3fs_with_their_checksum_and_type(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                    tmp_path: Path,
                                                                    s3fs_puts: list[dict[str, Any]]) -> None:
    assets = _fill(vault, tmp_path, 4)
    report = vault.sync(remote)
    assert report.files_uploaded == 4 and s3fs_puts == []
    client = _client(s3_bucket.storage_options)
    for asset in assets:
        found = client.get_object(Bucket=s3_bucket.name, Key=asset.storage_path)
        assert found["Body"].read() == Path(vault.library.file_path(asset)).read_bytes()
        assert found["Metadata"] == {"sha256": asset.sha256} and found["ContentType"] == "image/png"


def test_the_stores_signature_check_passes_them_and_refuses_them_signed_wrongly(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, s3fs_puts: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks SigV4 signatures once IAM is on (as AWS, Supabase and MinIO always do): a PUT signed wrongly
    here would pass the suite's default moto and fail on every real store. Signed with a wrong secret, the
    store refuses it, and the file goes through s3fs (signed right)."""
    from botocore.credentials import Credentials
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    from localvault.sync.s3_direct import DirectPut

    options = s3_bucket.storage_options
    iam = boto3.client("iam", endpoint_url=options["client_kwargs"]["endpoint_url"], region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    user = f"sync-{s3_bucket.name}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    signed = Remote(remote.database_url, remote.bucket_url,
                    dict(options, key=key["AccessKeyId"], secret=key["SecretAccessKey"]))
    first = _fill(vault, tmp_path, 3)
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    try:
        assert vault.sync(signed).files_uploaded == 3
        assert s3fs_puts == []  # signed right: the store took them all
        monkeypatch.setattr(DirectPut, "_credentials",
                            lambda self: Credentials(key["AccessKeyId"], "not-" + key["SecretAccessKey"]))
        later = _fill(vault, tmp_path, 2, start=3)
        assert vault.sync(signed).files_uploaded == 2
        assert len(s3fs_puts) == 2  # signed wrongly: refused, sent again through s3fs, and the next one too
    finally:
        signed.close()
        monkeypatch.undo()  # (before the bucket's clean-up, which signs with the suite's keys)
    client = _client(options)
    for asset in (*first, *later):
        assert client.head_object(Bucket=s3_bucket.name, Key=asset.storage_path)["Metadata"]["sha256"] == asset.sha256


def test_settings_it_does_not_know_leave_the_puts_to_s3fs(vault: Vault, remote: Remote, s3_bucket: Any,
                                                          tmp_path: Path, s3fs_puts: list[dict[str, Any]]) -> None:
    """Extra PUT arguments given to s3fs (server-side encryption here) must reach the store: such a bucket's
    PUTs keep going through s3fs."""
    options = dict(s3_bucket.storage_options, s3_additional_kwargs={"ServerSideEncryption": "AES256"})
    target = Remote(remote.database_url, remote.bucket_url, options)
    try:
        assets = _fill(vault, tmp_path, 2)
        assert vault.sync(target).files_uploaded == 2
    finally:
        target.close()
    assert len(s3fs_puts) == 2
    client = _client(s3_bucket.storage_options)
    for asset in assets:
        assert client.head_object(Bucket=s3_bucket.name, Key=asset.storage_path)["ServerSideEncryption"] == "AES256"


def test_an_answer_other_than_200_hands_the_puts_over_to_s3fs(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                tmp_path: Path,
                                                                s3fs_puts: list[dict[str, Any]]) -> None:
    """A store that is busy (503 SlowDown) or redirects: the file goes again through s3fs, which retries and
    follows as botocore does, and so do the sync's later PUTs."""
    from servers import s3_error_xml
    from test_sync_faults import through_proxy

    busy = iter([True])

    def busy_once(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "PUT" and body and next(busy, False):
            return 503, s3_error_xml("SlowDown", "Please reduce your request rate.")
        return None

    assets = _fill(vault, tmp_path, 3)
    with through_proxy(remote, s3_bucket, busy_once) as proxied:
        report = vault.sync(proxied, batch_rows=1)  # (one file a batch: the PUTs go one after another)
    assert report.files_uploaded == 3 and len(s3fs_puts) == 3
    client = _client(s3_bucket.storage_options)
    for asset in assets:
        assert client.head_object(Bucket=s3_bucket.name, Key=asset.storage_path)["Metadata"]["sha256"] == asset.sha256


def test_keys_found_where_aws_tools_look_sign_them_too(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                                        s3fs_puts: list[dict[str, Any]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys in the settings: the session's (here $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, set by the
    bucket's fixture), as s3fs's client takes them."""
    from localvault.sync import s3_client

    monkeypatch.setattr(s3_client, "_SESSIONS", {})  # (a session keeps the keys it found: not for later tests)
    options = {k: v for k, v in s3_bucket.storage_options.items() if k not in ("key", "secret")}
    target = Remote(remote.database_url, remote.bucket_url, options)
    try:
        _fill(vault, tmp_path, 2)
        assert vault.sync(target).files_uploaded == 2
    finally:
        target.close()
    assert s3fs_puts == []
