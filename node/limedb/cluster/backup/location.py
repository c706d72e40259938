"""Where a backup lives: `s3://bucket/prefix`, an optional endpoint, and the object keys in it.

Tables are content-addressed (`prefix/tables/<sha256>`), so a table already in the bucket is
not uploaded again; a backup's manifest is `prefix/backups/<id>.json`, written last; a running
backup leaves `prefix/pending/<id>.json` until it ends, so retention never sweeps the tables it
has uploaded but not yet referenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LocationError(ValueError):
    """An `s3://` URL that does not name a bucket."""


@dataclass(frozen=True, slots=True)
class Location:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None, region: str | None = None) -> Location:
        if not url.startswith("s3://"):
            raise LocationError(f"expected s3://bucket/prefix, got {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise LocationError(f"no bucket in {url!r}")
        return cls(bucket, prefix.strip("/"), endpoint or None, region or None)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else list(parts))

    def table_key(self, sha256: str) -> str:
        return self.key("tables", sha256)

    def manifest_key(self, backup_id: str) -> str:
        return self.key("backups", f"{backup_id}.json")

    def pending_key(self, backup_id: str) -> str:
        return self.key("pending", f"{backup_id}.json")

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "endpoint": self.endpoint, "region": self.region}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Location:
        return cls.parse(str(body["url"]), body.get("endpoint"), body.get("region"))
