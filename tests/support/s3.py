"""A real S3-compatible server for tests: SeaweedFS's `weed server -s3` on loopback.

`scripts/seaweedfs.sh` (run by `make test` and `make seaweedfs`) builds `weed` into
.cache/seaweedfs/bin. `start_s3_server` runs master, volume server, filer and S3 gateway in one
process on free loopback ports, in a directory of the test's, with one identity allowed
everything (weed's -s3.config), waits until an object can be stored and read back through the
gateway with signed requests, and `S3Server.stop` ends it and removes what it left in /tmp
(its gRPC unix sockets).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
WEED = ROOT / ".cache" / "seaweedfs" / "bin" / "weed"
REGION = "us-east-1"
ACCESS_KEY = "limedb-test-access-key"
SECRET_KEY = "limedb-test-secret-key-0123456789abcdef"
PROBE_BUCKET = "limedb-s3-ready"  # written to and removed while waiting for the server
# The services weed server starts, each with an HTTP and a gRPC port; the gRPC ones are given
# explicitly (weed's default, HTTP + 10000, may not exist for a high free port).
SERVICES = ("master", "volume", "filer", "s3")


def weed_binary() -> Path:
    if not os.access(WEED, os.X_OK):
        raise RuntimeError(f"{WEED} is missing: run `make seaweedfs` (scripts/seaweedfs.sh)")
    return WEED


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports free on `host` right now (held together while picking)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str
    region: str
    directory: Path
    proc: subprocess.Popen
    ports: dict[str, int]

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing, as weed expects)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def env(self) -> dict[str, str]:
        """The standard AWS environment variables for a process that talks to this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    @property
    def log(self) -> Path:
        return self.directory / "weed.log"

    def stop(self) -> None:
        """SIGKILL, then remove its sockets in /tmp. A SIGTERM stalls for 15 s or more (the
        volume server stops first, then the filer retries flushing its metadata log to it),
        and the data is thrown away anyway."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for name in SERVICES:
            sock = Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name + '.grpc']}.sock")
            sock.unlink(missing_ok=True)


def _identities(access_key: str, secret_key: str) -> dict:
    return {
        "identities": [
            {
                "name": "limedb-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def _command(directory: Path, host: str, ports: dict[str, int]) -> list[str]:
    cmd = [
        str(weed_binary()), "server",
        f"-dir={directory / 'data'}", f"-ip={host}", f"-ip.bind={host}",
        "-filer", "-s3",
        f"-s3.config={directory / 's3.json'}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Small volumes and a cap on their number: tests write megabytes, not gigabytes.
        "-master.volumeSizeLimitMB=64", "-volume.max=16",
    ]  # fmt: skip
    for name in SERVICES:
        cmd += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name + '.grpc']}"]
    return cmd


def _stores(server: S3Server) -> bool:
    """Whether an object can be written and read back: the gateway answers, and the master
    has a volume server to put the bytes on (it registers a little after the gateway is up)."""
    from botocore.exceptions import ClientError

    if server.proc.poll() is not None:
        raise RuntimeError(
            f"weed server exited with {server.proc.returncode}; its log, {server.log}:\n"
            + server.log.read_text(errors="replace")[-4000:]
        )
    s3 = server.client()
    try:
        s3.create_bucket(Bucket=PROBE_BUCKET)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
    ok = s3.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ready"
    s3.delete_object(Bucket=PROBE_BUCKET, Key="probe")
    s3.delete_bucket(Bucket=PROBE_BUCKET)
    return ok


def start_s3_server(directory: Path, host: str = "127.0.0.1", timeout_s: float = 90) -> S3Server:
    """Start `weed server -s3` in `directory` and return once its S3 gateway answers."""
    from botocore.exceptions import BotoCoreError, ClientError

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    (directory / "s3.json").write_text(json.dumps(_identities(ACCESS_KEY, SECRET_KEY)))
    picked = free_ports(host, 2 * len(SERVICES))
    ports = {}
    for i, name in enumerate(SERVICES):
        ports[name], ports[name + ".grpc"] = picked[2 * i], picked[2 * i + 1]
    with open(directory / "weed.log", "ab") as log:
        proc = subprocess.Popen(
            _command(directory, host, ports),
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends all of it
        )
    server = S3Server(
        endpoint=f"http://{host}:{ports['s3']}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
        directory=directory,
        proc=proc,
        ports=ports,
    )
    try:
        wait_for(
            lambda: _stores(server),
            timeout_s,
            lambda: f"weed's S3 gateway on {server.endpoint} (log: {server.log})",
            step_s=0.2,
            tolerate=(BotoCoreError, ClientError, OSError),
        )
    except BaseException:
        server.stop()
        raise
    return server
