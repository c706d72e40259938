"""The node process: configuration -> storage engine -> service -> HTTP app -> uvicorn.

The HTTP port opens at once (so /livez answers) while the engine recovers its write-ahead log in
a thread; the service is attached, and /readyz turns ready, only when recovery finished.
SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish, stops the
service, flushes and closes the engine, and exits 0.

With tls_mode on or required (limedb.tls), the three listeners (HTTP, RESP, internal RPC) take
TLS connections (and in `on` plaintext ones too) on their usual ports through
limedb.tls_listener, and the certificate files are polled for changes while the node runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import resource
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from limedb.api import attach_service, create_app
from limedb.api.bounded import sweep
from limedb.api.fastpath import FastPath
from limedb.api.wire import wire_protocol
from limedb.cluster.backup.agent import lone_node_backups
from limedb.cluster.local import LocalService
from limedb.cluster.service import KeyValueService
from limedb.config import Config
from limedb.tls import TlsMaterial
from limedb.tls_listener import SniffingListener
from limedb.tls_metrics import TlsMetrics

log = logging.getLogger("limedb.server")
# How long a node whose storage cannot be opened for want of file descriptors (EMFILE, ENFILE:
# every table is mapped, and each mapping holds one) keeps trying, once a second, before it
# gives up and exits: the limit may be raised meanwhile (`prlimit`), or other processes of the
# host may let go of theirs. A limit that stays too low still ends in a clear error.
STORAGE_DESCRIPTOR_RETRY_S = 60.0
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
T = TypeVar("T")


def open_engine(config: Config) -> Any:
    """Open (and recover) the storage engine in `config.data_dir`; blocking."""
    from limedb.hlc import HLC
    from limedb.storage import Engine, EngineOptions

    options = EngineOptions(durability=config.durability, periodic_ms=config.sync_interval_ms)
    # Bounded from the start: recovery observes the newest stored timestamp.
    clock = HLC(max_offset_ms=config.max_clock_offset_ms)
    return Engine.open(config.data_dir, options, hlc=clock)


def build_service(config: Config, engine: Any, tls: TlsMaterial | None = None) -> KeyValueService:
    """The KeyValueService this node serves. Single node: LocalService over the engine.

    With peers (`config.seeds` naming any node but this one): the cluster coordinator, its
    internal RPC on mutual TLS when `tls` is given.
    """
    if any(seed != config.advertise_url for seed in config.seeds):
        from limedb.cluster.node import ClusterService
        from limedb.resp.string_ops import StringOp

        # A peer may forward a RESP write here whether or not this node listens for RESP.
        return ClusterService.open(config, engine, StringOp, tls)
    service = LocalService(
        engine, node_id=config.node_id, node_url=config.advertise_url, vnodes=config.vnodes
    )
    service.backups = lone_node_backups(
        engine, config.node_id, config.advertise_url, config.data_dir, config.stream_mb_per_s,
        service.local_count,
    )  # fmt: skip
    return service


def bootstrap_password(config: Config) -> str | None:
    """The first admin's password: bootstrap_admin_password, else the file named by
    bootstrap_admin_password_file (a mounted Secret), else None."""
    if config.bootstrap_admin_password:
        return config.bootstrap_admin_password
    if config.bootstrap_admin_password_file:
        with open(config.bootstrap_admin_password_file, encoding="utf-8") as file:
            return file.read().strip() or None
    return None


def tune_gc() -> None:
    """Once the node is up: what exists now (modules, app, recovered engine) lives as long as
    the process, so the cyclic GC stops rescanning it, and it collects less often. Measured
    with three cluster nodes under load: full collections paused the loop 40-90 ms;
    nearly all request garbage is freed by reference counting anyway. Young collections stay
    small (each write leaves a record tuple in the memtable: a 50,000-object one paused a
    single node's loop 12-23 ms, a 10,000-object one 2-4 ms); older ones as rare as before."""
    gc.freeze()
    gc.set_threshold(10_000, 100, 100)


class TlsServer(uvicorn.Server):
    """uvicorn's server whose listener takes TLS (and, in tls_mode `on`, plaintext) on one port
    (limedb.tls_listener): uvicorn's own `ssl` serves TLS only, with a certificate fixed at
    start. Everything else (protocols, lifespan, graceful shutdown) is uvicorn's."""

    def __init__(self, config: uvicorn.Config, tls: TlsMaterial) -> None:
        super().__init__(config)
        self.tls = tls
        self.listener: SniffingListener | None = None

    async def startup(self, sockets: list | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config, tls = self.config, self.tls

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        self.listener = SniffingListener(
            create_protocol,
            lambda: tls.contexts.public_server,
            plaintext=tls.takes_plaintext("http"),
            name="HTTP",
        )
        tls.listeners["http"] = self.listener
        try:
            await self.listener.start(config.host, config.port, backlog=config.backlog)
        except OSError as exc:
            log.error("cannot listen for HTTP clients: %s", exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        self.servers = [self.listener]  # type: ignore[list-item]
        log.info(
            "HTTPS%s on %s:%d",
            " and HTTP" if tls.takes_plaintext("http") else "",
            config.host,
            self.listener.port,
        )
        self.started = True


class NodeRuntime:
    """Owns the engine and the service for the lifetime of one uvicorn server."""

    def __init__(self, config: Config, tls: TlsMaterial | None = None) -> None:
        self.config = config
        self.tls = tls
        self.engine: Any = None
        self.service: KeyValueService | None = None
        self.failed: BaseException | None = None
        self.server: uvicorn.Server | None = None
        self.resp: Any = None  # the RESP listener (limedb.resp), when resp_port is not 0
        self.bootstrap: asyncio.Task | None = None  # creating the first admin user
        self.app: FastPath = create_app(None, config, lifespan=self.lifespan)
        self.app.state.tls = tls
        if tls is not None:
            self.app.state.collectors.append(TlsMetrics(tls))

    async def _recover(self) -> None:
        if self.config.insecure and not self.config.cluster_secret:
            from limedb.secret import INSECURE_WARNING

            log.warning(INSECURE_WARNING)
        try:
            self.engine = await self._until_descriptors(lambda: open_engine(self.config))
            service = await self._until_descriptors(
                lambda: build_service(self.config, self.engine, self.tls)
            )
            await service.start()
            tune_gc()
            self.service = service
            attach_service(self.app, service)
            self._start_bootstrap()
            if self.config.resp_port and not await self._start_resp(service):
                return
            log.info(
                "storage recovered; node %s ready at %s",
                self.config.node_id,
                self.config.advertise_url,
            )
        except Exception as exc:
            log.exception("could not open storage in %s", self.config.data_dir)
            self.failed = exc
            if self.server is not None:
                self.server.should_exit = True

    async def _until_descriptors(self, open_: Callable[[], T]) -> T:
        """`open_()` in a thread, tried again each second while it fails for want of file
        descriptors, for up to STORAGE_DESCRIPTOR_RETRY_S (a failed open releases what it took:
        the engine's lock, its mapped tables)."""
        deadline = asyncio.get_running_loop().time() + STORAGE_DESCRIPTOR_RETRY_S
        warned = False
        while True:
            try:
                return await asyncio.to_thread(open_)
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                if not warned:
                    warned = True
                    log.warning(
                        "cannot open storage in %s: %s (open-file limit %d); trying again each "
                        "second for up to %.0f s",
                        self.config.data_dir,
                        exc,
                        resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                        STORAGE_DESCRIPTOR_RETRY_S,
                    )
            await asyncio.sleep(1.0)

    def _start_bootstrap(self) -> None:
        """Create user `admin` in the background if users were never set up (it waits for a
        quorum of peers, which may still be starting)."""
        password = bootstrap_password(self.config)
        auth = self.app.state.auth
        if password is None or auth is None:
            return
        from limedb.auth import management

        self.bootstrap = asyncio.create_task(
            management.bootstrap_until_done(auth.store, password), name="bootstrap-admin"
        )

    async def _start_resp(self, service: KeyValueService) -> bool:
        """The RESP listener (limedb.resp); a port that cannot be bound stops the node."""
        from limedb.resp import Limits, RespServer

        state = self.app.state
        resp = RespServer(
            service,
            Limits.from_config(self.config),
            state.connections,
            tls=self.tls,
            auth=state.auth,
        )
        try:
            await resp.start(self.config.host, self.config.resp_port)
        except OSError as exc:
            log.error("cannot listen for RESP clients (--resp-port 0 turns it off): %s", exc)
            self.failed = exc
            if self.server is not None:
                self.server.should_exit = True
            return False
        self.resp = resp
        self.app.state.collectors.append(resp.commands)  # RESP commands in /metrics
        self.app.state.resp_totals = resp.commands.totals  # and in /admin/stats
        return True

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        recovery = asyncio.create_task(self._recover())
        assert self.server is not None
        sweeper = asyncio.create_task(sweep(self.server.server_state.connections))
        watcher = asyncio.create_task(self.tls.watch()) if self.tls is not None else None
        budget = self.app.state.connections
        log.info(
            "client connections: up to %d HTTP, %d RESP, %d together "
            "(descriptor limit minus fd_reserve %d)",
            self.config.max_connections,
            self.config.resp_max_clients,
            budget.capacity(),
            budget.reserve,
        )
        try:
            yield
        finally:
            # uvicorn has stopped accepting and drained in-flight requests by now.
            sweeper.cancel()
            if watcher is not None:
                watcher.cancel()
            if self.bootstrap is not None:
                self.bootstrap.cancel()
            await asyncio.gather(
                recovery,
                sweeper,
                *([watcher] if watcher else []),
                *([self.bootstrap] if self.bootstrap else []),
                return_exceptions=True,
            )
            if self.resp is not None:
                await self.resp.stop(self.config.shutdown_timeout_s)
            if self.service is not None:
                await self.service.stop()
            if self.engine is not None:
                await asyncio.to_thread(self.engine.close)
                log.info("storage closed")

    def run(self) -> int:
        config = self.config
        uv_config = uvicorn.Config(
            self.app,
            host=config.host,
            port=config.port,
            loop="uvloop",
            # The wire protocol serves hot key-value requests without the ASGI round trip
            # (with fast_path on), and bounds connections and slow requests (always).
            http=wire_protocol(self.app.state),
            timeout_keep_alive=config.http_idle_timeout_s,
            lifespan="on",
            access_log=False,
            log_level=config.log_level,
            server_header=False,
            timeout_graceful_shutdown=config.shutdown_timeout_s,
        )
        self.server = (
            TlsServer(uv_config, self.tls)
            if self.tls is not None and self.tls.serves("http")
            else uvicorn.Server(uv_config)
        )
        # uvicorn re-raises the signal it caught once shutdown is complete; with these handlers
        # in place that is a no-op, so a graceful stop exits 0 instead of dying by SIGTERM.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        self.server.run()
        if self.failed is not None or not self.server.started:
            return 1
        return 0


def serve(config: Config) -> int:
    """Run a node until SIGTERM/SIGINT; returns the process exit code (2: the TLS files do not
    load)."""
    try:
        tls = TlsMaterial.from_config(config)
    except (OSError, ssl.SSLError, ValueError) as exc:
        log.error(
            "cannot load the TLS certificate %s, key %s or CA %s: %s",
            config.tls_cert,
            config.tls_key,
            config.tls_ca,
            exc,
        )
        return 2
    return NodeRuntime(config, tls).run()
