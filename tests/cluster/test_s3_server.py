"""The backup tests' S3 server is real: SeaweedFS's `weed server -s3`, driven with boto3 under
signed requests (no S3 mock anywhere)."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

pytestmark = pytest.mark.process


def test_bucket_put_get_list_delete_with_boto3(s3_server):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="limedb-s3-roundtrip")
    body = os.urandom(5 * 1024 * 1024 + 17)  # more than one chunk of weed's filer (4 MiB)
    s3.put_object(Bucket="limedb-s3-roundtrip", Key="tables/0001.sst", Body=body)
    s3.put_object(Bucket="limedb-s3-roundtrip", Key="tables/0002.sst", Body=b"small")
    s3.put_object(Bucket="limedb-s3-roundtrip", Key="manifests/b1.json", Body=b"{}")

    got = s3.get_object(Bucket="limedb-s3-roundtrip", Key="tables/0001.sst")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    listed = s3.list_objects_v2(Bucket="limedb-s3-roundtrip", Prefix="tables/")
    assert {(o["Key"], o["Size"]) for o in listed["Contents"]} == {
        ("tables/0001.sst", len(body)),
        ("tables/0002.sst", 5),
    }
    head = s3.head_object(Bucket="limedb-s3-roundtrip", Key="tables/0002.sst")
    assert head["ContentLength"] == 5

    s3.delete_object(Bucket="limedb-s3-roundtrip", Key="tables/0002.sst")
    with pytest.raises(ClientError) as missing:
        s3.head_object(Bucket="limedb-s3-roundtrip", Key="tables/0002.sst")
    assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey")
    assert "limedb-s3-roundtrip" in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_multipart_upload_and_download(s3_server, tmp_path):
    """How boto3 moves big tables: multipart above its threshold, ranged parallel reads."""
    s3 = s3_server.client()
    s3.create_bucket(Bucket="limedb-s3-multipart")
    src = tmp_path / "big.sst"
    src.write_bytes(os.urandom(11 * 1024 * 1024))
    config = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
    )
    s3.upload_file(str(src), "limedb-s3-multipart", "big.sst", Config=config)
    s3.download_file("limedb-s3-multipart", "big.sst", str(tmp_path / "back.sst"), Config=config)
    assert (tmp_path / "back.sst").read_bytes() == src.read_bytes()


def test_requests_signed_with_a_wrong_secret_are_refused(s3_server):
    s3_server.client().create_bucket(Bucket="limedb-s3-auth")
    intruder = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-the-secret",
        region_name=s3_server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as refused:
        intruder.put_object(Bucket="limedb-s3-auth", Key="x", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_the_aws_environment_of_the_server_configures_a_default_client(s3_server, monkeypatch):
    """What `limedb admin backup` gets: only the standard AWS_* variables."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket="limedb-s3-env")
    s3.put_object(Bucket="limedb-s3-env", Key="k", Body=b"v")
    assert s3.get_object(Bucket="limedb-s3-env", Key="k")["Body"].read() == b"v"
