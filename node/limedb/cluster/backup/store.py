"""The object store a backup goes to: boto3's S3 client on one bucket, and nothing else.

Calls block (boto3 is synchronous): the agent runs them in worker threads. Credentials are a
dict of boto3 session arguments handed over by whoever asked for the backup (the CLI resolves
them with boto3's default chain: AWS_* variables, a profile); empty, the node's own default
chain applies. Addressing is path-style, which every S3-compatible server understands, and
checksums are sent only where S3 requires them (servers other than AWS do not all read the
newer trailing checksums).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from limedb.cluster.backup.location import Location

CHUNK = 256 * 1024
CREDENTIAL_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


class StoreError(Exception):
    """The object store refused or could not be reached (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    modified_s: float


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code"))


def _missing(exc: Exception) -> bool:
    return _code(exc) in MISSING


class PacedReader:
    """A file read in chunks by boto3's worker thread, `pace(nbytes)` called for each byte
    the first time it is read (it sleeps to hold a byte rate); seekable, since a retried
    request rewinds its body. Over plain http botocore reads every body twice (SigV4 hashes
    the payload, then sends it): charging both passes held uploads to half their pace."""

    def __init__(self, file: BinaryIO, pace: Callable[[int], None]) -> None:
        self._file = file
        self._pace = pace
        self._charged_to = 0  # every byte before this offset was charged once

    def read(self, size: int = -1) -> bytes:
        start = self._file.tell()
        data = self._file.read(CHUNK if size is None or size < 0 or size > CHUNK else size)
        new = start + len(data) - max(start, self._charged_to)
        if new > 0:
            self._charged_to = start + len(data)
            self._pace(new)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


class ObjectStore:
    """One bucket of an S3-compatible store, at `location`."""

    def __init__(self, location: Location, credentials: dict[str, str] | None = None) -> None:
        # boto3 is imported here, not at module load: a node that takes no backup never pays
        # its import time at start-up.
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error: type[Exception] = ClientError
        self._errors: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
        self.location = location
        session = boto3.session.Session(
            **{k: v for k, v in (credentials or {}).items() if k in CREDENTIAL_FIELDS and v}
        )
        self._s3 = session.client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=location.region or session.region_name or "us-east-1",
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.bucket = location.bucket

    def _fail(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"{what} in {self.location.url}: {exc}")

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing; True when it was created."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return False
        except self._client_error as exc:
            if not _missing(exc):
                raise self._fail("bucket check", exc) from exc
        except self._errors as exc:
            raise self._fail("bucket check", exc) from exc
        try:
            self._s3.create_bucket(Bucket=self.bucket)
        except self._client_error as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail("bucket creation", exc) from exc
        return True

    def size_of(self, key: str) -> int | None:
        """The object's size, None when it does not exist."""
        try:
            return int(self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except self._client_error as exc:
            if _missing(exc):
                return None
            raise self._fail(f"HEAD {key}", exc) from exc
        except self._errors as exc:
            raise self._fail(f"HEAD {key}", exc) from exc

    def put_file(self, key: str, path: str, size: int, pace: Callable[[int], None]) -> None:
        try:
            with open(path, "rb") as f:
                self._s3.put_object(
                    Bucket=self.bucket, Key=key, Body=PacedReader(f, pace), ContentLength=size
                )
        except self._errors as exc:
            raise self._fail(f"upload of {key}", exc) from exc

    def put_json(self, key: str, body: Any) -> None:
        data = orjson.dumps(body, option=orjson.OPT_INDENT_2)
        try:
            self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/json"
            )
        except self._errors as exc:
            raise self._fail(f"write of {key}", exc) from exc

    def get_json(self, key: str) -> Any:
        """The object's JSON, None when it does not exist."""
        try:
            data = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self._client_error as exc:
            if _missing(exc):
                return None
            raise self._fail(f"read of {key}", exc) from exc
        except self._errors as exc:
            raise self._fail(f"read of {key}", exc) from exc
        return orjson.loads(data)

    def get_file(self, key: str, path: str, pace: Callable[[int], None]) -> str:
        """Download `key` to `path`; returns the sha256 of what was written."""
        digest = hashlib.sha256()
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            with open(path, "wb") as f:
                while chunk := body.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    pace(len(chunk))
        except self._errors as exc:
            raise self._fail(f"download of {key}", exc) from exc
        return digest.hexdigest()

    def sha256_of_object(self, key: str) -> str | None:
        """The sha256 of the object's bytes (downloaded, not trusted from metadata)."""
        digest = hashlib.sha256()
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            while chunk := body.read(CHUNK):
                digest.update(chunk)
        except self._client_error as exc:
            if _missing(exc):
                return None
            raise self._fail(f"read of {key}", exc) from exc
        except self._errors as exc:
            raise self._fail(f"read of {key}", exc) from exc
        return digest.hexdigest()

    def list(self, *parts: str) -> Iterator[StoredObject]:
        prefix = self.location.key(*parts) + "/"
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(
                        item["Key"], int(item["Size"]), item["LastModified"].timestamp()
                    )
        except self._client_error as exc:
            if _missing(exc):
                return
            raise self._fail(f"listing of {prefix}", exc) from exc
        except self._errors as exc:
            raise self._fail(f"listing of {prefix}", exc) from exc

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": key} for key in keys[i : i + 1000]]
            try:
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})
            except self._errors as exc:
                raise self._fail("delete", exc) from exc
