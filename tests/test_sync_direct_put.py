"""Small files' PUTs signed by botocore and sent past s3fs (localvault.sync.s3_direct), against the suite's moto
server: the first PUT of a sync goes through s3fs and shows where the others go; used with plain settings,
checked by the store's own signature check, and handing over to s3fs when the settings, botocore's request or
the store's answer call for it."""

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
def turned_off(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Why the direct path was turned off, each time it was."""
    from localvault.sync.s3_direct import DirectPut

    reasons: list[str] = []
    real = DirectPut._turn_off

    def recorded(self: Any, why: str) -> None:
        reasons.append(why)
        real(self, why)

    monkeypatch.setattr(DirectPut, "_turn_off", recorded)
    return reasons


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
                                                                    s3fs_puts: list[dict[str, Any]],
                                                                    turned_off: list[str]) -> None:
    assets = _fill(vault, tmp_path, 4)
    report = vault.sync(remote)
    assert report.files_uploaded == 4 and len(s3fs_puts) == 1 and turned_off == []  # (the first shows the way)
    client = _client(s3_bucket.storage_options)
    for asset in assets:
        found = client.get_object(Bucket=s3_bucket.name, Key=asset.storage_path)
        assert found["Body"].read() == Path(vault.library.file_path(asset)).read_bytes()
        assert found["Metadata"] == {"sha256": asset.sha256} and found["ContentType"] == "image/png"


def test_the_stores_signature_check_passes_them_and_refuses_them_signed_wrongly(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, s3fs_puts: list[dict[str, Any]],
        turned_off: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
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
        assert len(s3fs_puts) == 1 and turned_off == []  # signed right: the store took the two sent past s3fs
        monkeypatch.setattr(DirectPut, "_credentials",
                            lambda self: Credentials(key["AccessKeyId"], "not-" + key["SecretAccessKey"]))
        later = _fill(vault, tmp_path, 2, start=3)
        assert vault.sync(signed).files_uploaded == 2
        # signed wrongly: the second of this sync (after the one through s3fs) is refused, and sent again there
        assert len(s3fs_puts) == 3 and turned_off == ["the store answered a PUT with 403"]
    finally:
        signed.close()
        monkeypatch.undo()  # (before the bucket's clean-up, which signs with the suite's keys)
    client = _client(options)
    for asset in (*first, *later):
        assert client.head_object(Bucket=s3_bucket.name, Key=asset.storage_path)["Metadata"]["sha256"] == asset.sha256


@pytest.mark.parametrize("given_in", ["storage options", "fsspec's configuration"])
def test_settings_it_does_not_know_leave_the_puts_to_s3fs(vault: Vault, remote: Remote, s3_bucket: Any,
                                                          tmp_path: Path, s3fs_puts: list[dict[str, Any]],
                                                          monkeypatch: pytest.MonkeyPatch, given_in: str) -> None:
    """Extra PUT arguments given to s3fs (server-side encryption here) must reach the store: such a bucket's
    PUTs keep going through s3fs, whether the sync's settings say so or fsspec's own (~/.config/fsspec,
    $FSSPEC_S3…), which s3fs is made with too."""
    import fsspec.config

    extra = {"s3_additional_kwargs": {"ServerSideEncryption": "AES256"}}
    options = s3_bucket.storage_options
    if given_in == "storage options":
        options = dict(options, **extra)
    else:
        monkeypatch.setitem(fsspec.config.conf, "s3", extra)
    target = Remote(remote.database_url, remote.bucket_url, options)
    try:
        assets = _fill(vault, tmp_path, 3)
        assert vault.sync(target).files_uploaded == 3
    finally:
        target.close()
    assert len(s3fs_puts) == 3
    client = _client(s3_bucket.storage_options)
    for asset in assets:
        assert client.head_object(Bucket=s3_bucket.name, Key=asset.storage_path)["ServerSideEncryption"] == "AES256"


def test_a_put_botocore_adds_a_checksum_to_stays_with_s3fs(vault: Vault, remote: Remote, s3_bucket: Any,
                                                            tmp_path: Path, s3fs_puts: list[dict[str, Any]],
                                                            turned_off: list[str]) -> None:
    """Told to (``request_checksum_calculation``), botocore sends a CRC32 the store keeps with the object: a PUT
    without it would not be the same PUT."""
    options = dict(s3_bucket.storage_options, config_kwargs={"request_checksum_calculation": "when_supported"})
    target = Remote(remote.database_url, remote.bucket_url, options)
    try:
        assets = _fill(vault, tmp_path, 3)
        assert vault.sync(target, batch_rows=1).files_uploaded == 3
    finally:
        target.close()
    assert len(s3fs_puts) == 3 and all("x-amz-checksum-crc32" in why for why in turned_off)
    client = _client(s3_bucket.storage_options)
    for asset in assets:
        found = client.head_object(Bucket=s3_bucket.name, Key=asset.storage_path, ChecksumMode="ENABLED")
        assert found.get("ChecksumCRC32")


@pytest.mark.parametrize(("settings", "url", "region"), [
    ({"region_name": "eu-west-1"}, "https://lv-bucket.s3.eu-west-1.amazonaws.com/", "eu-west-1"),
    ({"region_name": "eu-central-1"}, "https://lv-bucket.s3.eu-central-1.amazonaws.com/", "eu-central-1"),
    ({"region_name": "us-east-1", "endpoint_url": "https://abc.supabase.co/storage/v1/s3"},
     "https://abc.supabase.co/storage/v1/s3/lv-bucket/", "us-east-1"),
])
def test_later_puts_go_where_botocore_sends_the_first(settings: dict[str, str], url: str, region: str) -> None:
    """The URL and signing region are botocore's for a PUT of the bucket (its regional host on AWS: a presigned
    URL would have named the global one), read from the request it is about to send (not sent here)."""
    import botocore.session
    from botocore.config import Config
    from botocore.handlers import add_expect_header

    from localvault.sync.s3_direct import DirectPut

    class NotSent(Exception):
        pass

    seen: list[Any] = []

    def look(request: Any, **_kwargs: Any) -> None:
        seen.append(request)
        raise NotSent

    session = botocore.session.get_session()  # set up as localvault's (sync/s3_client.py)
    session.unregister("before-call.s3", add_expect_header)
    client = session.create_client("s3", aws_access_key_id="k", aws_secret_access_key="s", **settings,
                                   config=Config(request_checksum_calculation="when_required"))
    client.meta.events.register_first("before-send.s3.PutObject", look)
    key = "0a0a0a0a-0000-4000-8000-00000000000a/some asset.png"
    with pytest.raises(NotSent):
        client.put_object(Bucket="lv-bucket", Key=key, Body=b"png", ContentType="image/png", Metadata={"sha256": "0"})
    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs=settings, skip_instance_cache=True)
    direct = DirectPut(fs, "lv-bucket")
    direct._learn(seen[0], "0a0a0a0a-0000-4000-8000-00000000000a/some%20asset.png")
    assert (direct._prefix, direct._region) == (url, region)
    direct.close()


def test_an_answer_other_than_200_hands_the_puts_over_to_s3fs(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                tmp_path: Path, s3fs_puts: list[dict[str, Any]],
                                                                turned_off: list[str]) -> None:
    """A store that is busy (503 SlowDown) or redirects: the file goes again through s3fs, which retries and
    follows as botocore does, and so do the sync's later PUTs."""
    from servers import s3_error_xml
    from test_sync_faults import through_proxy

    puts = iter(range(100))

    def second_busy(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "PUT" and body and next(puts) == 1:  # (the first goes through s3fs: the second is ours)
            return 503, s3_error_xml("SlowDown", "Please reduce your request rate.")
        return None

    assets = _fill(vault, tmp_path, 4)
    with through_proxy(remote, s3_bucket, second_busy) as proxied:
        report = vault.sync(proxied, batch_rows=1)  # (one file a batch: the PUTs go one after another)
    assert report.files_uploaded == 4 and len(s3fs_puts) == 4
    assert turned_off == ["the store answered a PUT with 503"]
    client = _client(s3_bucket.storage_options)
    for asset in assets:
        assert client.head_object(Bucket=s3_bucket.name, Key=asset.storage_path)["Metadata"]["sha256"] == asset.sha256


def test_keys_found_where_aws_tools_look_sign_them_too(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                                        s3fs_puts: list[dict[str, Any]], turned_off: list[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys in the settings: the session's (here $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, set by the
    bucket's fixture), as s3fs's client takes them."""
    from localvault.sync import s3_client

    monkeypatch.setattr(s3_client, "_SESSIONS", {})  # (a session keeps the keys it found: not for later tests)
    options = {k: v for k, v in s3_bucket.storage_options.items() if k not in ("key", "secret")}
    target = Remote(remote.database_url, remote.bucket_url, options)
    try:
        _fill(vault, tmp_path, 3)
        assert vault.sync(target).files_uploaded == 3
    finally:
        target.close()
    assert len(s3fs_puts) == 1 and turned_off == []


def test_the_first_put_learns_from_its_own_request_not_another_syncs(s3_bucket: Any, tmp_path: Path) -> None:
    """Two syncs in one process with equal settings share s3fs's client: the other's PUT of the same key to
    another bucket (a vault synced to two remotes), made while this one's first PUT is under way, must not
    become where this sync's later PUTs go (the store would answer 200 with the right ETag)."""
    import hashlib
    import uuid

    from localvault.sync.bucket import Bucket

    options = s3_bucket.storage_options
    other = f"lv-test-{uuid.uuid4().hex[:16]}"
    client = _client(options)
    client.create_bucket(Bucket=other)
    ours, theirs = Bucket(f"s3://{s3_bucket.name}", options), Bucket(f"s3://{other}", options)
    assert ours.fs is theirs.fs
    files = {}
    for n, name in enumerate(("first", "second")):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (8, 8), (n, 1, 2)).save(path)
        files[name] = (path, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
    first_path, first_sha, first_size = files["first"]
    meanwhile: list[str] = []

    async def other_sync_puts(request: Any, **_kwargs: Any) -> None:
        if not meanwhile and f"/{s3_bucket.name}/" in request.url:
            meanwhile.append(request.url)
            await theirs.fs._call_s3("put_object", Bucket=other, Key="u/first.png", Body=first_path.read_bytes(),
                                     ContentType="image/png", Metadata={"sha256": first_sha})

    events = ours.fs.s3.meta.events
    events.register("before-send.s3.PutObject", other_sync_puts, unique_id="test-other-sync")
    try:
        ours.upload(first_path, "u/first.png", first_sha, first_size, "image/png")
    finally:
        events.unregister("before-send.s3.PutObject", unique_id="test-other-sync")
    second_path, second_sha, second_size = files["second"]
    ours.upload(second_path, "u/second.png", second_sha, second_size, "image/png")
    try:
        listed = {name: sorted(o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", []))
                  for name in (s3_bucket.name, other)}
        assert meanwhile and ours._direct is not None and not ours._direct.off
        assert listed == {s3_bucket.name: ["u/first.png", "u/second.png"], other: ["u/first.png"]}
    finally:
        ours.close()
        theirs.close()
        for key in ("u/first.png", "u/second.png"):
            client.delete_object(Bucket=other, Key=key)
        client.delete_bucket(Bucket=other)


@pytest.mark.parametrize(("options", "used"), [
    ({"anon": False, "requester_pays": False, "version_aware": True}, True),
    ({"anon": True}, False),
    ({"requester_pays": True}, False),
    ({"cache_regions": True}, False),
    ({"config_kwargs": {"s3": {"payload_signing_enabled": False}}}, False),
])
def test_which_settings_keep_the_direct_path(options: dict[str, Any], used: bool) -> None:
    from localvault.sync.s3_direct import direct_put_for

    fs = s3fs.S3FileSystem(key="k", secret="s", skip_instance_cache=True, **options)
    assert (direct_put_for(fs, "lv-bucket") is not None) == used


def test_a_remote_set_from_the_cli_takes_the_direct_path(vault: Vault, server: str, s3_bucket: Any, tmp_path: Path,
                                                          s3fs_puts: list[dict[str, Any]],
                                                          turned_off: list[str]) -> None:
    """`localvault remote set --endpoint-url … --key … --secret … --region …` stores settings the path keeps."""
    from test_sync_cli import _set_remote, ok, run

    _fill(vault, tmp_path, 3)
    vault.close()  # (the CLI opens it itself)
    _set_remote(vault.root, server, s3_bucket)
    ok(run("--vault", str(vault.root), "sync"))
    assert len(s3fs_puts) == 1 and turned_off == []


def test_session_credentials_are_frozen_for_a_while_then_taken_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys from the session (a profile, an instance role: refreshed by botocore) are asked for again once
    CREDENTIALS_SECONDS have passed, not frozen for the whole sync; given keys are used as they are."""
    from localvault.sync import s3_direct

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs={"region_name": "us-east-1"})
    fs.s3  # noqa: B018  (s3fs sets its session up)
    asked: list[int] = []
    real = fs.session.get_credentials

    async def counted() -> Any:
        asked.append(1)
        return await real()

    monkeypatch.setattr(fs.session, "get_credentials", counted)
    direct = s3_direct.DirectPut(fs, "lv-bucket")
    assert direct._credentials().access_key == "from-the-environment"
    direct._credentials()
    assert len(asked) == 1  # frozen
    monkeypatch.setattr(s3_direct, "CREDENTIALS_SECONDS", 0.0)
    direct._credentials()
    assert len(asked) == 2  # taken again
    given = s3fs.S3FileSystem(key="k", secret="s", skip_instance_cache=True)
    assert s3_direct.DirectPut(given, "lv-bucket")._credentials().access_key == "k"
