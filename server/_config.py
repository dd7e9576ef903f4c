"""The node's settings: declared once, read once, handed on as a frozen value.

:class:`NodeConfig` declares every setting with its default and its help.
:func:`load_config` reads them with pydantic-settings, in this order of
precedence: command-line flags > ``FLASHSTOCK_*`` environment variables > the
TOML config file (``--config`` / ``FLASHSTOCK_CONFIG``) > defaults. The CLI
builds ``flashstock serve``'s flags from the same declaration, so ``--help``
lists every setting.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from flashstock.client import AdmissionKey, read_admission_key
from flashstock.lockmgr import EtcdAccess
from flashstock.server._logs import LOG_FORMATS
from flashstock.server._tls import TlsFiles
from flashstock.server.rpc.authz import AuthSettings, split_paths
from flashstock.server.rpc.validate import max_hold_ms
from flashstock.server.store.redis import RedisTls, masked_url


def _setting(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help}, repr=not secret)


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is told at start. A default instance is ``NodeConfig()``."""

    host: str = _setting("127.0.0.1", "Address the gRPC server binds to.")
    port: int = _setting(50051, "gRPC port; 0 picks a free one (printed at start).")
    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        "Redis holding the stock: redis://host:port/db, or rediss://user:password@host:port/db for TLS and "
        "an ACL user (the password is never shown).",
        secret=True,
    )
    redis_tls_ca: str = _setting("", "PEM CA certificate(s) of a rediss:// Redis; empty = the system's CAs.")
    redis_tls_cert: str = _setting("", "PEM client certificate for a rediss:// Redis that asks for one.")
    redis_tls_key: str = _setting("", "PEM private key of redis_tls_cert.")
    shards: int = _setting(64, "Logical shards; must match every other node and client of the cluster.")
    ledger: str = _setting(
        "",
        "SQL ledger URL: sqlite:///path/ledger.sqlite3 (one host) or postgresql+psycopg://user:pw@host/db "
        "(several hosts); empty = the embedded SQLite file <data_dir>/ledger.sqlite3.",
    )
    data_dir: str = _setting("./flashstock-data", "Folder of the node's own files (the embedded SQLite ledger).")
    workers: int = _setting(1, "Server processes sharing the port (SO_REUSEPORT); 0 = one per core.")
    duties_process: bool = _setting(
        True,
        "Run the node's duties (persister, reaper, warden, metrics) in a process of their own, apart from "
        "the serving workers; false = in worker 0.",
    )
    request_ttl_s: int = _setting(
        86400,
        "How long a request's first answer is kept for retries, seconds (at least this, at most twice). "
        "Far longer than any client's retry window (the client gives up after its deadline, 10 s by "
        "default); holds may last at most half of it.",
    )
    default_hold_ms: int = _setting(
        600_000, "Hold length when a Hold asks for 0, ms; at most a day, and at most request_ttl_s / 2."
    )
    coalesce_window_ms: float = _setting(
        2.0,
        "Concurrent deductions of one shard share one Redis call, at most one call per this many ms "
        "when the shard is busy (an idle shard's request goes at once); 0 = no waiting.",
    )
    reap_interval_ms: int = _setting(200, "How often expired holds are looked for, ms.")
    persist_batch: int = _setting(500, "Most log entries per shard per ledger commit.")
    persist_max_wait_ms: float = _setting(
        5.0,
        "After a first new log entry, how long the persister waits for more before committing, ms "
        "(a group commit: larger batches cost the node less CPU; durable replies wait about this much).",
    )
    durable_wait_ms: int = _setting(
        2000,
        "How long a durable reply waits for the ledger; then UNAVAILABLE, and a retry with the same "
        "request id returns the real outcome.",
    )
    rebuild_wait_s: float = _setting(
        5.0, "How long requests wait for a shard's rebuild from the ledger before UNAVAILABLE."
    )
    rebuild_lock_expire_s: int = _setting(5, "Expiry of a shard's rebuild mutex, seconds (renewed while held).")
    reconcile_interval_s: float = _setting(
        10.0,
        "How often the node compares Redis with the ledger for the shards it owns (the reconciliation "
        "duty; its findings are the flashstock_reconcile_* metrics), seconds; 0 = never.",
    )
    metrics_port: int = _setting(0, "Prometheus metrics HTTP port on host (the duties process); 0 = off.")
    health_port: int = _setting(
        0,
        "A second gRPC port on host, always PLAINTEXT, serving only the health service (grpc.health.v1, the "
        "same statuses as the gRPC port): for probes that cannot speak TLS (Kubernetes' native gRPC "
        "probes); 0 = off.",
    )
    serving_metrics: bool = _setting(
        True,
        "With metrics_port: every serving worker counts its RPCs (grpc_server_*), calls in flight and the "
        "coalescer's batches in memory and writes them to <data_dir>/metrics/<node id>/ once a second, "
        "where the metrics endpoint sums them; false = not counted (the duty metrics stay).",
    )
    stats_interval_ms: int = _setting(
        1000,
        "How often each serving worker sends the sale figures it counted (attempts by outcome, units, "
        "distinct users, latency per SKU and second) to Redis, ms; 0 = no figures are counted.",
    )
    metrics_sku_window_s: int = _setting(
        600,
        "Per-SKU metrics (flashstock_sku_*) cover the SKUs on sale now or with attempts in this many "
        "seconds, among those of the shards this node owns.",
    )
    metrics_sku_cap: int = _setting(
        100, "Most SKUs with per-SKU metrics per node (the most recently active first); 0 = none."
    )
    tls_cert: str = _setting(
        "",
        "PEM certificate (chain) of the node: with tls_key its gRPC and metrics ports serve TLS; the files are "
        "re-read when they change (gRPC: rotation without restart); empty = plaintext.",
    )
    tls_key: str = _setting("", "PEM private key of tls_cert.")
    tls_client_ca: str = _setting(
        "",
        "PEM CA certificate(s): mutual TLS, every caller must present a certificate one of them signed; "
        "empty = any caller (needs tls_cert).",
    )
    auth: str = _setting(
        "off",
        "Who may call: on = every StockService and AdminService call needs a bearer token (auth_jwt_keys) or a "
        "mutual-TLS certificate (auth_cert_roles) whose roles allow the method (health and reflection stay "
        "open); off = anyone who reaches the port may call anything (local development).",
    )
    auth_jwt_keys: str = _setting(
        "",
        "Files (comma-separated) of the keys bearer tokens are checked against: an HS256 secret (at least 32 "
        "bytes), an RS256 or ES256 PEM public key, or a JWKS (JSON); empty = no tokens taken.",
    )
    auth_jwt_issuer: str = _setting("", "The iss claim every bearer token must carry (needed with auth_jwt_keys).")
    auth_jwt_audience: str = _setting(
        "", "A value the aud claim of every bearer token must hold (needed with auth_jwt_keys)."
    )
    auth_jwt_leeway_s: float = _setting(30.0, "Clock skew allowed on a token's exp and nbf, seconds.")
    auth_jwt_roles_claim: str = _setting(
        "roles", "The token claim naming the caller's roles (a list, or space-separated)."
    )
    auth_cert_roles: str = _setting(
        "",
        "TOML or JSON file mapping a client certificate's subject (its CN, else its first SAN) to its roles: "
        '"orders-gateway.example" = ["buyer"]; needs tls_client_ca; empty = certificates identify no one.',
    )
    admission_keys: str = _setting(
        "",
        "Files of the HMAC keys admission tokens are checked with (comma-separated; each at least 32 bytes of "
        "text, its key id the file's name without extension: several let the gateway's key rotate). A SKU put "
        "with require_token takes Deduct and Hold only with a valid token; empty = no keys, so such SKUs "
        "refuse every call.",
    )
    etcd: str = _setting(
        "",
        "etcd endpoints (host:port, comma-separated) of the cluster's coordination: the node registers, "
        "and runs the duties only of the shards it owns; empty = a standalone node that owns every shard.",
    )
    etcd_tls_ca: str = _setting("", "PEM CA certificate(s) of etcd's server certificate: etcd is reached over TLS.")
    etcd_tls_cert: str = _setting(
        "", "PEM client certificate for etcd (its --client-cert-auth); also turns TLS on (system CAs)."
    )
    etcd_tls_key: str = _setting("", "PEM private key of etcd_tls_cert.")
    etcd_user: str = _setting("", "etcd user (etcd auth enabled); empty = no etcd auth.")
    etcd_password: str = _setting(
        "", "Password of etcd_user; better FLASHSTOCK_ETCD_PASSWORD or etcd_password_file.", secret=True
    )
    etcd_password_file: str = _setting("", "File holding the password of etcd_user (its first line).")
    cluster: str = _setting(
        "flashstock", "Cluster name: the etcd key prefix /flashstock/<cluster>/ (several clusters may share an etcd)."
    )
    node_id: str = _setting("", "This node's id in the cluster; empty = its advertised address (host:port).")
    advertise: str = _setting("", "host:port clients reach this node at, registered in etcd; empty = host:port.")
    lease_ttl_s: int = _setting(
        5,
        "etcd lease TTL, seconds: a node that stops (crash, pause, partition) keeps its shards this long, "
        "then they fail over; it stops its own duties a fifth of it earlier.",
    )
    max_in_flight: int = _setting(
        256,
        "Most StockService calls in flight per serving worker; the call past it is refused at once with "
        "RESOURCE_EXHAUSTED and a RetryInfo (50-200 ms), before it touches Redis, and takes nothing; "
        "0 = no cap. Admin and health calls are never refused.",
    )
    max_queue_ms: float = _setting(
        0.0,
        "Shed StockService calls also when a serving worker has a standing queue: when even the fastest call "
        "answered in the last 100 ms took longer than this, new calls are refused (RESOURCE_EXHAUSTED, "
        "RetryInfo) until one is answered faster, ms; 0 = off.",
    )
    max_in_flight_per_caller: int = _setting(
        0,
        "Most StockService calls in flight per caller (the peer's IP address) per serving worker, so one "
        "misbehaving gateway cannot take the node from the others; the call past it is refused at once like "
        "one past max_in_flight (the message names the caller's cap); 0 = no cap.",
    )
    max_rate_per_caller: float = _setting(
        0.0,
        "Most StockService calls a second per caller (the peer's IP address) per serving worker: a token "
        "bucket holding one second's worth; a call past it is refused at once with RESOURCE_EXHAUSTED and a "
        "RetryInfo of when the caller may call again, and takes nothing; 0 = no cap.",
    )
    redis_trip_timeouts: int = _setting(
        5,
        "Fail fast on a sick Redis: after this many Redis timeouts in a row (see redis_timeout_s) a serving "
        "worker stops sending StockService calls to Redis, answers them UNAVAILABLE with a RetryInfo at once, "
        "turns its health NOT_SERVING, and probes Redis once per redis_cooldown_ms until it answers in time; "
        "0 = off.",
    )
    redis_cooldown_ms: int = _setting(
        1000, "How long a worker that stopped sending to a sick Redis waits between two probes of it, ms."
    )
    degrade: bool = _setting(
        False,
        "Degraded mode by hand: every serving worker answers GetStock, GetSku and ListSkus from a snapshot at "
        "most degraded_read_max_age_ms old (as it does by itself while it sheds calls). Also on while the "
        "file <data_dir>/degrade exists (looked for once a second).",
    )
    degraded_read_max_age_ms: int = _setting(
        1000,
        "In degraded mode (a worker shedding calls, or degrade on), reads are answered from a per-worker "
        "snapshot at most this old, ms.",
    )
    redis_pool_size: int = _setting(256, "Most Redis connections per worker process.")
    redis_timeout_s: float = _setting(2.0, "Redis socket timeout, seconds; a timeout answers UNAVAILABLE.")
    grace_s: float = _setting(
        5.0,
        "Shutdown grace, seconds: on SIGTERM (or Ctrl-C) the node stops taking calls at once (its port "
        "closes) and gives the calls in flight this long to finish, durable ones included (the duties "
        "process stops after the workers), then cuts them; 0 = cut them at once.",
    )
    log_level: str = _setting("INFO", "Logging level: DEBUG, INFO, WARNING, ERROR.")
    log_format: str = _setting(
        "text",
        "Log lines on stderr: text (for a person), or json (one object a line: time, level, logger, message, "
        "process, node, and request_id, sku, shard, epoch in the lines that have them).",
    )

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


_RANGES: dict[str, tuple[float, float, str]] = {
    "grace_s": (0, 3600, ""),
    "stats_interval_ms": (0, 60_000, ""),
    "metrics_sku_cap": (0, 10_000, ""),
    "max_in_flight": (0, 1_000_000, " (0 = no cap)"),
    "max_in_flight_per_caller": (0, 1_000_000, " (0 = no cap)"),
    "max_rate_per_caller": (0, 1_000_000, " (0 = no cap)"),
    "max_queue_ms": (0, 60_000, " (0 = off)"),
    "redis_trip_timeouts": (0, 10_000, " (0 = off)"),
    "redis_cooldown_ms": (10, 600_000, ""),
    "degraded_read_max_age_ms": (1, 60_000, ""),
    "coalesce_window_ms": (0, 100, ""),
}
"""Settings checked against a range: (lowest, highest, what a special value means)."""


def config_problems(config: NodeConfig) -> list[str]:
    """What is wrong with ``config``, each naming its setting."""
    out = []
    if not 0 <= config.port <= 65535:
        out.append(f"port: {config.port} is not 0-65535")
    if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
        out.append(f"redis_url: {masked_url(config.redis_url)!r} is not a redis://, rediss:// or unix:// URL")
    elif problem := _redis_url_problem(config.redis_url):
        out.append(f"redis_url: {masked_url(config.redis_url)!r}: {problem}")
    out.extend(redis_tls(config).problems(config.redis_url))
    out.extend(_etcd_access_shape(config).problems())
    if config.etcd_password and config.etcd_password_file:
        out.append("etcd_password, etcd_password_file: give one or the other")
    if not 1 <= config.shards <= 16384:
        out.append(f"shards: {config.shards} is not 1-16384")
    if config.workers < 0:
        out.append(f"workers: {config.workers} is negative")
    if not 0 <= config.metrics_port <= 65535:
        out.append(f"metrics_port: {config.metrics_port} is not 0-65535")
    if not 0 <= config.health_port <= 65535:
        out.append(f"health_port: {config.health_port} is not 0-65535")
    elif config.health_port and config.health_port in (config.port, config.metrics_port):
        clash = "port" if config.health_port == config.port else "metrics_port"
        out.append(f"health_port: {config.health_port} is also {clash}; the health port needs a port of its own")
    for endpoint in filter(None, config.etcd.split(",")):
        host, _, port = endpoint.strip().rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            out.append(f"etcd: {endpoint!r} is not host:port")
    for name, value in (("cluster", config.cluster), ("node_id", config.node_id or "x")):
        if not value or "/" in value or len(value) > 128 or value != value.strip():
            out.append(f"{name}: {value!r} must be 1-128 characters without '/' or spaces at its ends")
    if config.advertise and not config.advertise.rpartition(":")[2].isdigit():
        out.append(f"advertise: {config.advertise!r} is not host:port")
    if not 1 <= config.lease_ttl_s <= 600:
        out.append(f"lease_ttl_s: {config.lease_ttl_s} is not 1-600")
    if config.ledger and not config.ledger.startswith(("sqlite:///", "postgresql")):
        out.append(f"ledger: {config.ledger!r} is not sqlite:///path or postgresql+psycopg://...")
    for name in (
        "request_ttl_s",
        "default_hold_ms",
        "reap_interval_ms",
        "redis_pool_size",
        "persist_batch",
        "durable_wait_ms",
        "rebuild_wait_s",
        "rebuild_lock_expire_s",
    ):
        if getattr(config, name) <= 0:
            out.append(f"{name}: must be > 0")
    for name, (low, high, note) in _RANGES.items():
        value = getattr(config, name)
        if not low <= value <= high:
            out.append(f"{name}: {value} is not {low}-{high}{note}")
    if config.metrics_sku_window_s <= 0:
        out.append("metrics_sku_window_s: must be > 0")
    if config.reconcile_interval_s < 0:
        out.append(f"reconcile_interval_s: {config.reconcile_interval_s} is negative")
    if config.default_hold_ms > max_hold_ms(config.request_ttl_s):
        out.append(
            f"default_hold_ms: must be at most {max_hold_ms(config.request_ttl_s)}, the longest hold: a day, "
            "or half of request_ttl_s if less (a hold's record must outlive it)"
        )
    out.extend(tls_files(config).shape_problems())
    out.extend(auth_settings(config).shape_problems())
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        out.append(f"log_level: {config.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    if config.log_format not in LOG_FORMATS:
        out.append(f"log_format: {config.log_format!r} is not {' or '.join(LOG_FORMATS)}")
    return out


def _redis_url_problem(url: str) -> str | None:
    """What redis-py would refuse in a redis:// or rediss:// URL: its port, its database number."""
    if url.startswith("unix://"):
        return None if urlsplit(url).path else "no socket path"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError as exc:
        return str(exc)
    if not parts.hostname:
        return "no host"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"the database {db!r} is not a number"
    return None


def node_name(config: NodeConfig, port: int) -> str:
    """The node's id: ``node_id``, else the address it is reached at (``advertise``, else host:port)."""
    return config.node_id or config.advertise or f"{config.host}:{port}"


def ledger_url(config: NodeConfig) -> str:
    """The ledger URL the node uses: the setting, or the embedded SQLite file."""
    from flashstock.server.ledger import sqlite_url

    return config.ledger or sqlite_url(config.data_dir)


def tls_files(config: NodeConfig) -> TlsFiles:
    """The node's TLS files (their contents are checked at start: :meth:`TlsFiles.problems`)."""
    return TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca)


def auth_settings(config: NodeConfig) -> AuthSettings:
    """The node's auth settings (their files are read at start: :meth:`AuthSettings.authorizer`)."""
    return AuthSettings(
        auth=config.auth,
        jwt_keys=split_paths(config.auth_jwt_keys),
        jwt_issuer=config.auth_jwt_issuer,
        jwt_audience=config.auth_jwt_audience,
        jwt_leeway_s=config.auth_jwt_leeway_s,
        jwt_roles_claim=config.auth_jwt_roles_claim,
        cert_roles=config.auth_cert_roles,
        mutual_tls=bool(config.tls_client_ca),
    )


def admission_keys(config: NodeConfig) -> dict[str, AdmissionKey]:
    """The admission-token keys of ``config``, read now, by key id; ``ValueError`` naming the setting and file."""
    keys: dict[str, AdmissionKey] = {}
    for path in (p.strip() for p in config.admission_keys.split(",")):
        if not path:
            continue
        try:
            key = read_admission_key(path)
        except ValueError as exc:
            raise ValueError(f"admission_keys: {exc}") from None
        if key.kid in keys:
            raise ValueError(f"admission_keys: two files have the key id {key.kid!r}")
        keys[key.kid] = key
    return keys


def redis_tls(config: NodeConfig) -> RedisTls:
    """The TLS files of the node's ``rediss://`` Redis."""
    return RedisTls(config.redis_tls_ca, config.redis_tls_cert, config.redis_tls_key)


def _etcd_access_shape(config: NodeConfig) -> EtcdAccess:
    password = config.etcd_password or ("(in a file)" if config.etcd_password_file else "")
    return EtcdAccess(config.etcd_tls_ca, config.etcd_tls_cert, config.etcd_tls_key, config.etcd_user, password)


def etcd_access(config: NodeConfig) -> EtcdAccess:
    """How the node reaches etcd: TLS files and its etcd user (the password read from its file, if given).

    Raises ``ValueError`` naming ``etcd_password_file`` when that file cannot be read.
    """
    password = config.etcd_password
    if config.etcd_password_file:
        password = read_password_file(config.etcd_password_file, "etcd_password_file")
    return EtcdAccess(config.etcd_tls_ca, config.etcd_tls_cert, config.etcd_tls_key, config.etcd_user, password)


def read_password_file(path: str, setting: str) -> str:
    """The first line of ``path`` (a password), or ``ValueError`` naming ``setting``."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path!r}: {exc.strerror or exc}") from None


def etcd_endpoints(config: NodeConfig) -> list[str]:
    """The etcd endpoints of ``config`` (empty: a standalone node)."""
    return [e.strip() for e in config.etcd.split(",") if e.strip()]


def setting_help() -> dict[str, tuple[Any, str]]:
    """Each setting's default and help, in declaration order (for the CLI)."""
    return {f.name: (f.default, f.metadata["help"]) for f in dataclasses.fields(NodeConfig)}


OTHER_COMMANDS_ENV = frozenset(
    {
        "FLASHSTOCK_CONFIG",
        "FLASHSTOCK_ADDR",
        "FLASHSTOCK_TOKEN",
        "FLASHSTOCK_TOKEN_FILE",
        "FLASHSTOCK_TLS_CA",
        "FLASHSTOCK_CLUSTER_DIR",
        "FLASHSTOCK_FUZZ_SEED",
    }
)
"""``FLASHSTOCK_*`` variables that are not node settings: the config file's, other commands' and the tests'."""

OTHER_COMMANDS_ENV_PREFIXES = ("FLASHSTOCK_FAILPOINT_", "FLASHSTOCK_BOARD_")
"""Prefixes of ``FLASHSTOCK_*`` variables that are not node settings (the tests' failpoints, the board's page)."""


def unknown_env_vars(env: Mapping[str, str]) -> list[str]:
    """The ``FLASHSTOCK_*`` names in ``env`` that are no setting (misspelt?) nor another command's."""
    known = {f"FLASHSTOCK_{f.name.upper()}" for f in dataclasses.fields(NodeConfig)} | OTHER_COMMANDS_ENV
    return sorted(
        name
        for name in env
        if name.upper().startswith("FLASHSTOCK_")
        and name.upper() not in known
        and not name.upper().startswith(OTHER_COMMANDS_ENV_PREFIXES)
    )


def writable_folder_problem(setting: str, folder: str | Path, why: str) -> str | None:
    """Why the node could not write in ``folder`` (creating it first if missing), naming ``setting``; None: it can.

    Nothing is created: a missing folder's nearest existing parent must be a
    folder the process may write in.
    """
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{setting}: cannot make {str(path)!r} ({why}): {str(existing)!r} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "folder" if existing == path else f"folder (nor create it in {str(existing)!r})"
        return f"{setting}: cannot write in the {what} {str(path)!r} ({why}): permission denied or read-only"
    return None


def folder_problems(config: NodeConfig) -> list[str]:
    """The folders the node writes in that it cannot write in: ``data_dir`` when it holds the embedded ledger
    or the serving metrics' figures, and the folder of a ``sqlite:///`` ledger."""
    uses = []
    if not config.ledger:
        uses.append("the embedded SQLite ledger")
    if config.metrics_port and config.serving_metrics:
        uses.append("the serving metrics' figures")
    out = []
    if uses and (problem := writable_folder_problem("data_dir", config.data_dir, " and ".join(uses))):
        out.append(problem)
    if config.ledger.startswith("sqlite:///"):
        database = config.ledger.removeprefix("sqlite:///").partition("?")[0]
        folder = Path(database).expanduser().absolute().parent
        if database and (problem := writable_folder_problem("ledger", folder, "the SQLite ledger's folder")):
            out.append(problem)
    return out


def start_problems(config: NodeConfig) -> list[str]:
    """What a start would refuse before connecting to anything: the files the settings name (TLS, auth,
    admission keys, etcd's password and TLS, Redis's TLS), read now, and the folders the node writes in."""
    problems = tls_files(config).problems()
    try:
        auth_settings(config).authorizer()  # its files read once here, to fail before any worker starts
    except ValueError as exc:
        problems.append(str(exc))
    try:
        admission_keys(config)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        etcd_access(config)
    except ValueError as exc:
        problems.append(str(exc))
    for name in ("redis_tls_ca", "redis_tls_cert", "redis_tls_key", "etcd_tls_ca", "etcd_tls_cert", "etcd_tls_key"):
        path = getattr(config, name)
        if path and not os.path.isfile(path):
            problems.append(f"{name}: {path!r} is not a file")
    problems.extend(folder_problems(config))
    return problems


def _read_toml(path: Path) -> dict[str, Any]:
    """A config file's settings: its top-level keys or its [flashstock] table."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config: file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config: {path} is not valid TOML: {exc}") from None
    table = data.get("flashstock", data)
    return dict(table) if isinstance(table, dict) else {}


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _settings_class(env: Mapping[str, str], toml: Mapping[str, Any]) -> type[BaseSettings]:
    hints = typing.get_type_hints(NodeConfig)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(NodeConfig)}

    class _Settings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="FLASHSTOCK_", extra="forbid")

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            from pydantic_settings import EnvSettingsSource

            env_source = EnvSettingsSource(settings_cls, env_prefix="FLASHSTOCK_", case_sensitive=False)
            env_source.env_vars = {k.lower(): v for k, v in env.items()}
            return (init_settings, env_source, _TomlSource(settings_cls, toml))

    return pydantic.create_model("NodeSettings", __base__=_Settings, **fields)  # type: ignore[call-overload]


def _unchecked(values: Mapping[str, Any]) -> NodeConfig:
    """A NodeConfig of ``values`` (defaults for the rest) without its range checks: what --check-config inspects."""
    config = object.__new__(NodeConfig)
    for f in dataclasses.fields(NodeConfig):
        object.__setattr__(config, f.name, values.get(f.name, f.default))
    return config


def read_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> tuple[NodeConfig, list[str]]:
    """The settings as read, and every problem with them, each naming its setting (empty: all good).

    Like :func:`load_config`, but it goes on past a problem: a value that
    cannot be read at all (a word for a number) keeps its default, so the
    other settings are still checked; a wrong value (out of range) is kept,
    and the returned config is then not one a node may start with.
    """
    env = dict(os.environ if env is None else env)
    path = config_file or env.get("FLASHSTOCK_CONFIG")
    env = {k: v for k, v in env.items() if k.upper().startswith("FLASHSTOCK_") and k.upper() != "FLASHSTOCK_CONFIG"}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    problems: list[str] = []
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    toml: dict[str, Any] = {}
    if path:
        try:
            toml = _read_toml(Path(path))
        except ValueError as exc:
            problems.append(str(exc))
        unknown = set(toml) - names
        if unknown:
            problems.append(f"config: {path} has unknown settings: {', '.join(sorted(unknown))}")
            toml = {k: v for k, v in toml.items() if k in names}
    values: dict[str, Any] = {}
    for _ in range(2):  # a second read without the values that could not be read
        try:
            values = _settings_class(env, toml)(**given).model_dump()
            break
        except pydantic.ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            problems.extend(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            given = {k: v for k, v in given.items() if k not in bad}
            env = {k: v for k, v in env.items() if k.upper().removeprefix("FLASHSTOCK_").lower() not in bad}
            toml = {k: v for k, v in toml.items() if k not in bad}
    config = _unchecked(values)
    problems.extend(config_problems(config))
    return config, list(dict.fromkeys(problems))


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> NodeConfig:
    """Read the settings once: ``flags`` > ``env`` (``FLASHSTOCK_*``) > config file > defaults.

    ``env`` defaults to ``os.environ``; tests pass their own. ``config_file``
    defaults to ``FLASHSTOCK_CONFIG`` from ``env``. Raises ``ValueError``
    naming each bad setting.
    """
    config, problems = read_config(flags, env, config_file)
    if problems:
        raise ValueError("; ".join(problems))
    return dataclasses.replace(config)  # checked again, on the way
