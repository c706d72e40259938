"""Every node setting in one place, read from flags > LIMEDB_* environment > LimeDB aliases > defaults.

Each setting is declared once in `SETTINGS` with its type, default, environment names and
validation; `load_config` resolves them and fails with a `ConfigError` that names the setting
(and where the bad value came from) instead of starting with a half-understood configuration.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "LIMEDB_"
DURABILITY_MODES = ("sync", "periodic", "none")
STREAM_MODES = ("tables", "keys")
CONSISTENCY_LEVELS = ("one", "quorum", "all")
LOG_LEVELS = ("debug", "info", "warning", "error")
TLS_MODES = ("off", "on", "required")

# Names the original LimeDB reads; accepted so that its deployment manifests work unchanged.
LIMEDB_ALIASES: dict[str, str] = {
    "SERVER_PORT": "port",
    "NODE_URL": "advertise_url",
    "NODE_PEERS": "seeds",
    "VIRTUAL_NODES": "vnodes",
    "DATA_DIR": "data_dir",
}
# Read by the original for tracing; accepted so its manifests start, but not used here.
IGNORED_ALIASES = ("OTEL_ENDPOINT",)
# Read by the client and CLI (`limedb get --url`), not by the node; never an unknown setting.
CLIENT_ENV = ("LIMEDB_URL", "LIMEDB_CA", "LIMEDB_USER", "LIMEDB_PASSWORD", "LIMEDB_TOKEN")
AUTH_MODES = ("off", "required")


class ConfigError(ValueError):
    """A setting is unknown or has an invalid value; the message names the setting."""


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {text!r}")
        return value

    return parse


def _optional_choice(options: tuple[str, ...]) -> Callable[[str], str | None]:
    parse = _choice(options)
    return lambda text: parse(text) if str(text).strip() else None


def _text(text: str) -> str:
    return str(text).strip()


def _optional_text(text: str) -> str | None:
    value = str(text).strip()
    return value or None


def _url(text: str) -> str:
    value = str(text).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:8484, got {text!r}")
    return value


def _optional_url(text: str) -> str | None:
    return _url(text) if str(text).strip() else None


def _url_list(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = text if isinstance(text, list | tuple) else str(text).split(",")
    return tuple(_url(item) for item in items if str(item).strip())


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Setting:
    """One configuration knob: how to parse it and which environment names carry it."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


MIB = 1024 * 1024

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "host",
        _text,
        "",
        "interface the HTTP, RESP and internal ports bind; default 127.0.0.1 for a single node, "
        "0.0.0.0 for a cluster member (seeds or await_join)",
    ),
    Setting("port", _int(1, 65535), 8484, "HTTP port (LimeDB alias SERVER_PORT)"),
    Setting("data_dir", _text, "./limedb-data", "directory of the storage engine (alias DATA_DIR)"),
    Setting("node_id", _optional_text, None, "stable node identity; defaults to advertise_url"),
    Setting(
        "advertise_url",
        _optional_url,
        None,
        "URL peers and clients use to reach this node (alias NODE_URL); "
        "defaults to http://<host>:<port> (https:// when the HTTP port has TLS)",
    ),
    Setting("seeds", _url_list, (), "comma-separated URLs of peers to join (alias NODE_PEERS)"),
    Setting(
        "vnodes", _int(0, 4096), 256, "virtual nodes per node on the ring (alias VIRTUAL_NODES)"
    ),
    Setting("replication_factor", _int(1, 15), 3, "copies of every key"),
    Setting("read_consistency", _choice(CONSISTENCY_LEVELS), "quorum", "default read level"),
    Setting("write_consistency", _choice(CONSISTENCY_LEVELS), "quorum", "default write level"),
    Setting("cluster_secret", _optional_text, None, "shared secret for internal/admin routes"),
    Setting(
        "insecure",
        _bool,
        False,
        "let a cluster member run without a cluster secret (internal and admin routes open)",
    ),
    Setting(
        "auth_mode",
        _choice(AUTH_MODES),
        "off",
        "off: data routes and RESP commands open to anyone (as the original LimeDB); required: "
        "they need a user (HTTP Basic/Bearer, RESP AUTH). Admin routes need an admin user once "
        "users exist, whatever the mode (docs/security.md)",
    ),
    Setting(
        "bootstrap_admin_password",
        _optional_text,
        None,
        "password of user `admin`, created once when the cluster has no users yet",
    ),
    Setting(
        "bootstrap_admin_password_file",
        _optional_text,
        None,
        "a file holding bootstrap_admin_password (a mounted Kubernetes Secret)",
    ),
    Setting(
        "auth_cache_ms",
        _int(0, 600_000),
        1000,
        "how long a node trusts the user records it read; changes made through another node "
        "take effect here within this time",
    ),
    Setting(
        "internal_port",
        _int(0, 65535),
        0,
        "node-to-node RPC port (replication, gossip); 0 = HTTP port + 1000",
    ),
    Setting(
        "await_join",
        _bool,
        False,
        "start outside the ring (fresh disk) and wait for `limedb admin join`",
    ),
    Setting(
        "auto_replace",
        _bool,
        True,
        "a member that starts on an empty data dir under an identity the ring still lists "
        "asks the survivors to replace it (stream its ranges) instead of serving empty reads",
    ),
    Setting(
        "rejoin_wait_ms",
        _int(0),
        30_000,
        "how long a node on an empty data dir waits for a first seed to be reachable and say "
        "whether it is a member back on a lost disk (seeds restarting with it); then it starts "
        "as a new node",
    ),
    Setting("stream_mb_per_s", _int(0), 4, "range streaming throttle in MB/s (0 = unlimited)"),
    Setting(
        "purge_mb_per_s",
        _int(0),
        4,
        "average pace, in MB/s of tables rewritten, of an old owner's purge of the ranges it "
        "handed off after a transition (0 = compaction's rate)",
    ),
    Setting(
        "stream_mode",
        _choice(STREAM_MODES),
        "tables",
        "how ranges move to a new owner: tables (cut into SSTables, pulled by the target and "
        "ingested) | keys (streamed through the write path; also the fallback for older peers)",
    ),
    Setting(
        "cleanup_grace_ms",
        _int(0),
        2000,
        "wait before old owners hand off moved ranges, when some node did not confirm it "
        "finished the requests it routed by the ring before",
    ),
    Setting(
        "cleanup_hold_ms",
        _int(0),
        0,
        "least time a transition stays in cleanup (0: only until every node has finished the "
        "requests it routed by the ring before)",
    ),
    Setting(
        "repair_interval_s",
        _int(0),
        86400,
        "anti-entropy repair of this node's ranges every ~this long (jittered), 0 = off",
    ),
    Setting("repair_mb_per_s", _int(0), 8, "anti-entropy repair throttle in MB/s (0 = unlimited)"),
    Setting(
        "verify_versions_per_s",
        _int(0),
        10_000,
        "the verification after a transition: versions hashed per second and replica "
        "(~5 µs of the replica's CPU each; 0 = unlimited)",
    ),
    Setting(
        "hint_window_ms",
        _int(0),
        3 * 3600 * 1000,
        "hints older than this are dropped instead of replayed (repair covers them)",
    ),
    Setting(
        "transition_timeout_s",
        _int(0),
        300,
        "roll back a transition whose target or sources stay unreachable this long (0 = never)",
    ),
    Setting("durability", _choice(DURABILITY_MODES), "sync", "sync | periodic | none"),
    Setting("sync_interval_ms", _int(1, 60_000), 50, "fsync period in periodic durability"),
    Setting("max_key_bytes", _int(1, 65_536), 1024, "largest key accepted, in bytes"),
    Setting("max_value_bytes", _int(1, 256 * MIB), MIB, "largest value accepted, in bytes"),
    Setting("max_batch_items", _int(1, 100_000), 1000, "most keys in one /v1/batch request"),
    Setting("max_inflight", _int(0), 256, "client requests served at once (0 = no limit)"),
    Setting(
        "max_queued",
        _int(0),
        1024,
        "client requests waiting for a slot beyond max_inflight; more are refused with 503",
    ),
    Setting("request_timeout_ms", _int(1, 600_000), 5000, "deadline of forwarded requests"),
    # Connections and buffers (docs/operations.md, "Connections, buffers and descriptors").
    Setting(
        "max_connections",
        _int(1),
        4096,
        "HTTP client connections open at once; more get 503 with Retry-After and are closed",
    ),
    Setting(
        "probe_connections",
        _int(0, 1024),
        8,
        "connections beyond the caps kept for one probe, /metrics or /admin request each "
        "(from the descriptor reserve), so a node full of clients can still be probed",
    ),
    Setting(
        "fd_reserve",
        _int(0),
        128,
        "file descriptors kept for storage, peers and hints: client connections (HTTP and "
        "RESP together) are refused once they would come this close to RLIMIT_NOFILE",
    ),
    Setting(
        "http_idle_timeout_s",
        _int(1, 3600),
        15,
        "close an HTTP connection that has no request in progress for this long",
    ),
    Setting(
        "http_header_timeout_s",
        _int(1, 600),
        10,
        "a request's headers must arrive within this from its first byte, else 408 and close",
    ),
    Setting(
        "http_body_timeout_s",
        _int(1, 3600),
        30,
        "a request's body must arrive within this after its headers, else 408 and close",
    ),
    Setting(
        "max_header_bytes",
        _int(1024),
        64 * 1024,
        "largest request line and headers of one HTTP request; more get 431 and the "
        "connection is closed",
    ),
    Setting(
        "max_body_bytes",
        _int(1024),
        64 * 1024,
        "largest request body of the routes without a limit of their own (admin calls)",
    ),
    Setting("max_batch_bytes", _int(1024), 16 * MIB, "largest /v1/batch request body, in bytes"),
    Setting(
        "max_buffered_body_bytes",
        _int(MIB),
        256 * MIB,
        "HTTP request body bytes held for all requests together; a request that would go "
        "beyond gets 503 with Retry-After",
    ),
    Setting(
        "max_clock_offset_ms",
        _int(100, 3_600_000),
        5000,
        "largest clock difference between two nodes: remote timestamps further ahead are "
        "refused; a node more than half of it off the majority refuses to coordinate writes",
    ),
    Setting("resp_port", _int(0, 65535), 6379, "RESP (Redis protocol) port, 0 = off"),
    Setting("resp_password", _optional_text, None, "password of RESP clients (AUTH); none = open"),
    Setting(
        "resp_protected_mode",
        _bool,
        True,
        "without resp_password, answer RESP clients from loopback addresses only",
    ),
    Setting("resp_max_clients", _int(1), 10_000, "RESP connections served at once"),
    Setting("resp_max_bulk_bytes", _int(1024), 64 * MIB, "largest RESP request, in bytes"),
    Setting("resp_idle_timeout_s", _int(0), 300, "close idle RESP clients after this, 0 = never"),
    Setting(
        "resp_max_buffered_bytes",
        _int(MIB),
        256 * MIB,
        "RESP request bytes buffered for all clients together; a client that would go beyond "
        "gets an error and is disconnected",
    ),
    # TLS (docs/security.md): one certificate, key and CA for the HTTP, RESP and RPC ports.
    Setting("tls_cert", _optional_text, None, "PEM certificate (chain) of this node"),
    Setting("tls_key", _optional_text, None, "PEM private key of tls_cert"),
    Setting(
        "tls_ca",
        _optional_text,
        None,
        "PEM CA bundle: peers' certificates must chain to it (internal RPC is mutual TLS)",
    ),
    Setting(
        "tls_mode",
        _choice(TLS_MODES),
        "off",
        "off | on (TLS and plaintext on every port) | required (plaintext refused); "
        "the files are reloaded when they change",
    ),
    Setting("http_tls_mode", _optional_choice(TLS_MODES), None, "tls_mode of the HTTP port only"),
    Setting("resp_tls_mode", _optional_choice(TLS_MODES), None, "tls_mode of the RESP port only"),
    Setting(
        "internal_tls_mode",
        _optional_choice(TLS_MODES),
        None,
        "tls_mode of the internal RPC port, and whether the node dials its peers with TLS",
    ),
    Setting("shutdown_timeout_s", _int(1, 300), 8, "grace period for in-flight requests"),
    Setting("log_level", _choice(LOG_LEVELS), "info", "debug | info | warning | error"),
    Setting("fast_path", _bool, True, "serve the hot key-value routes outside FastAPI"),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def default(name: str) -> Any:
    """The default of setting `name`, for code that runs without a loaded Config (a library
    caller, a test): the one place a default is written is its entry in SETTINGS."""
    return _BY_NAME[name].default


@dataclass(frozen=True)
class Config:
    """The resolved settings of one node process (`load_config` gives every field; the
    defaults live in SETTINGS only, `default(name)` reads one)."""

    host: str
    port: int
    data_dir: str
    node_id: str
    advertise_url: str
    seeds: tuple[str, ...]
    vnodes: int
    replication_factor: int
    read_consistency: str
    write_consistency: str
    cluster_secret: str | None
    insecure: bool
    auth_mode: str
    bootstrap_admin_password: str | None
    bootstrap_admin_password_file: str | None
    auth_cache_ms: int
    internal_port: int
    await_join: bool
    auto_replace: bool
    rejoin_wait_ms: int
    stream_mb_per_s: int
    purge_mb_per_s: int
    stream_mode: str
    cleanup_grace_ms: int
    cleanup_hold_ms: int
    repair_interval_s: int
    repair_mb_per_s: int
    verify_versions_per_s: int
    hint_window_ms: int
    transition_timeout_s: int
    durability: str
    sync_interval_ms: int
    max_key_bytes: int
    max_value_bytes: int
    max_batch_items: int
    max_inflight: int
    max_queued: int
    request_timeout_ms: int
    max_connections: int
    probe_connections: int
    fd_reserve: int
    http_idle_timeout_s: int
    http_header_timeout_s: int
    http_body_timeout_s: int
    max_header_bytes: int
    max_body_bytes: int
    max_batch_bytes: int
    max_buffered_body_bytes: int
    max_clock_offset_ms: int
    resp_port: int
    resp_password: str | None
    resp_protected_mode: bool
    resp_max_clients: int
    resp_max_bulk_bytes: int
    resp_idle_timeout_s: int
    resp_max_buffered_bytes: int
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    tls_mode: str
    # Each listener's own mode: tls_mode unless set (load_config fills them in).
    http_tls_mode: str
    resp_tls_mode: str
    internal_tls_mode: str
    shutdown_timeout_s: int
    log_level: str
    fast_path: bool
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _check_tls(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """Fill in each listener's mode from tls_mode and check that TLS has its three files."""
    modes = ("http_tls_mode", "resp_tls_mode", "internal_tls_mode")
    for name in modes:
        if values[name] is None:
            values[name] = values["tls_mode"]
    files = ("tls_cert", "tls_key", "tls_ca")
    if all(values[name] == "off" for name in modes):
        given = [name for name in files if values[name]]
        if given:
            raise ConfigError(
                f"{', '.join(given)} given but tls_mode is off (from {sources['tls_mode']}): "
                "set --tls-mode on or required"
            )
        return
    missing = [name for name in files if not values[name]]
    if missing:
        on = [name for name in ("tls_mode", *modes) if values[name] != "off"]
        raise ConfigError(
            f"{on[0]} {values[on[0]]} needs {', '.join(missing)} "
            "(--tls-cert, --tls-key, --tls-ca or LIMEDB_TLS_CERT / _KEY / _CA)"
        )
    for name in files:
        if not os.path.isfile(values[name]):
            raise ConfigError(
                f"invalid value for {name} (from {sources[name]}): no such file {values[name]!r}"
            )


def _default_advertise_url(host: str, port: int, scheme: str = "http") -> str:
    # A wildcard bind address is not reachable as such; advertise loopback for local use.
    reachable = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in reachable and not reachable.startswith("["):
        reachable = f"[{reachable}]"
    return f"{scheme}://{reachable}:{port}"


def load_config(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Resolve every setting; `flags` holds command-line values (None means "not given")."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if environ is None else environ

    unknown_flags = sorted(set(flags) - set(_BY_NAME))
    if unknown_flags:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown_flags)}")
    known_env = {s.env for s in SETTINGS} | set(CLIENT_ENV)
    unknown_env = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known_env)
    if unknown_env:
        raise ConfigError(
            f"unknown setting(s) in the environment: {', '.join(unknown_env)} "
            f"(known: {', '.join(sorted(known_env))})"
        )

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw: Any
        if setting.name in flags:
            raw, origin = flags[setting.name], f"--{setting.name.replace('_', '-')}"
        elif setting.env in env:
            raw, origin = env[setting.env], setting.env
        else:
            alias = next(
                (a for a, n in LIMEDB_ALIASES.items() if n == setting.name and a in env), None
            )
            if alias is None:
                values[setting.name] = setting.default
                sources[setting.name] = "default"
                continue
            raw, origin = env[alias], alias
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid value for {setting.name} (from {origin}): {exc}") from None
        sources[setting.name] = origin

    _check_tls(values, sources)
    if not values["host"]:
        clustered = bool(values["seeds"]) or values["await_join"]
        values["host"] = "0.0.0.0" if clustered else "127.0.0.1"
    if not values["advertise_url"]:
        scheme = "http" if values["http_tls_mode"] == "off" else "https"
        values["advertise_url"] = _default_advertise_url(values["host"], values["port"], scheme)
    if not values["node_id"]:
        values["node_id"] = values["advertise_url"]
    return Config(**values, sources=sources)


def describe() -> list[tuple[str, str, str, str]]:
    """(setting, environment variable, default, help) rows for docs and `--help`."""
    aliases = {n: a for a, n in LIMEDB_ALIASES.items()}
    rows = []
    for s in SETTINGS:
        env = s.env + (f" / {aliases[s.name]}" if s.name in aliases else "")
        default = ",".join(s.default) if isinstance(s.default, tuple) else s.default
        rows.append((s.name, env, "" if default is None else str(default), s.help))
    return rows
