"""A real Prometheus for tests: Debian's `prometheus` (scripts/system-deps.sh installs it; its
service is never started), run on a free loopback port with a configuration and rule files of
the test's, and read through its HTTP API."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from support.orphans import die_with_parent
from support.s3 import free_ports
from support.wait import wait_for

HOST = "127.0.0.1"


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise RuntimeError("prometheus is missing: run `make system-deps` (scripts/system-deps.sh)")
    return found


@dataclass
class Target:
    """One scrape target and the labels Prometheus gives its series."""

    address: str  # host:port
    labels: dict[str, str]


@dataclass
class Prometheus:
    url: str
    directory: Path
    proc: subprocess.Popen

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def log_tail(self, lines: int = 30) -> str:
        text = (self.directory / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(
    directory: Path,
    job: str,
    targets: list[Target],
    rule_groups: list[dict],
    interval_s: float = 1.0,
) -> Prometheus:
    """Prometheus scraping `targets` as job `job` every `interval_s` and evaluating
    `rule_groups` (a rule file's `groups`) as often; returns once its API answers."""
    directory.mkdir(parents=True, exist_ok=True)
    rules = directory / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    every = f"{int(interval_s * 1000)}ms"
    config = {
        "global": {
            "scrape_interval": every,
            "evaluation_interval": every,
            "scrape_timeout": every,
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [t.address], "labels": t.labels} for t in targets],
            }
        ],
    }
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    (port,) = free_ports(HOST, 1)
    log = open(directory / "prometheus.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={HOST}:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent(),
    )
    log.close()
    server = Prometheus(f"http://{HOST}:{port}", directory, proc)

    def ready() -> bool:
        assert proc.poll() is None, f"prometheus exited:\n{server.log_tail()}"
        return httpx.get(f"{server.url}/-/ready", timeout=2.0).status_code == 200

    try:
        wait_for(ready, 60.0, lambda: f"prometheus ready\n{server.log_tail()}", 0.2)
    except BaseException:
        server.stop()
        raise
    return server
