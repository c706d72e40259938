"""A backup's upload is paced by the bytes of each table once, whatever botocore reads: over
plain http it reads every body twice (SigV4 hashes the payload before sending it), which held
uploads to half the pace they were given. Against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from limedb.cluster.backup.location import Location
from limedb.cluster.backup.store import ObjectStore, PacedReader
from support.s3 import S3Server

pytestmark = pytest.mark.process


def test_a_table_is_charged_to_the_pace_once_though_botocore_reads_it_twice(
    s3_server: S3Server, tmp_path: Path
):
    assert s3_server.endpoint.startswith("http://")  # the payload-signing case
    location = Location.parse("s3://limedb-paced/node", s3_server.endpoint)
    store = ObjectStore(
        location,
        {"aws_access_key_id": s3_server.access_key, "aws_secret_access_key": s3_server.secret_key},
    )
    s3_server.client().create_bucket(Bucket="limedb-paced")
    size = 3 * (1 << 20) + 123
    body = os.urandom(size)
    path = tmp_path / "table"
    path.write_bytes(body)
    charged: list[int] = []
    store.put_file(location.table_key("t1"), str(path), size, charged.append)
    assert sum(charged) == size
    got = s3_server.client().get_object(Bucket="limedb-paced", Key=location.table_key("t1"))
    assert got["Body"].read() == body


def test_a_rewound_body_is_not_charged_again_and_new_bytes_are():
    charged: list[int] = []
    reader = PacedReader(io.BytesIO(bytes(1000)), charged.append)
    assert len(reader.read(600)) == 600
    reader.seek(0)
    assert len(reader.read()) == 1000  # a retry from the start: only the last 400 are new
    reader.seek(200)
    reader.read(100)
    assert charged == [600, 400]
