"""Client settings: frozen values with defaults, and the pure retry plan."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries UNAVAILABLE, DEADLINE_EXCEEDED and Overloaded, always with the same request id.

    An Overloaded (or Unavailable) answer's own retry delay is waited at least."""

    initial_backoff_s: float = 0.02
    """Wait before the first retry (before jitter)."""
    max_backoff_s: float = 1.0
    """Longest wait between two attempts."""
    multiplier: float = 2.0
    """Each wait is this many times the one before, up to ``max_backoff_s``."""
    max_attempts: int = 8
    """Attempts in all, the first included; 1 = never retry."""

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before attempt 2, 3, ...: exponential with full jitter."""
        rng = rng or random.Random()
        ceiling = self.initial_backoff_s
        for _ in range(self.max_attempts - 1):
            yield rng.uniform(ceiling / 2, ceiling)
            ceiling = min(ceiling * self.multiplier, self.max_backoff_s)


DEFAULT_ADDRESSES = ("127.0.0.1:50051",)
"""Where a client without ``addresses`` or ``etcd`` sends its calls: a node on this machine."""


@dataclass(frozen=True)
class ClientConfig:
    """Where a client sends calls and how long it keeps trying.

    The nodes come from one of two sources, never both:

    - a fixed list, ``addresses`` (the default: :data:`DEFAULT_ADDRESSES`);
    - the live nodes of ``cluster`` registered in ``etcd``: the client reads
      them when it starts and follows them as they join and leave.

    ::

        ClientConfig(addresses="10.0.0.5:50051,10.0.0.6:50051")
        ClientConfig(etcd="10.0.0.2:2379,10.0.0.3:2379", cluster="prod")
    """

    addresses: Sequence[str] | None = None
    """Node addresses (host:port, a list or a comma-separated string); calls
    are spread over them round-robin, and a retry goes to the next one.
    ``None``: :data:`DEFAULT_ADDRESSES`, or none when ``etcd`` is given
    (giving both is an error: ``dataclasses.replace(config, etcd=...,
    addresses=None)`` switches a config to etcd). Always a tuple once the
    config is made."""
    deadline_s: float = 10.0
    """Overall time a call may take, retries included."""
    attempt_timeout_s: float = 3.0
    """Time one attempt may take (capped by what is left of ``deadline_s``)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Retries of UNAVAILABLE and DEADLINE_EXCEEDED."""
    connections_per_address: int = 1
    """gRPC connections opened to each address: more spreads load over a node's
    worker processes (they share the port with SO_REUSEPORT)."""
    metadata: Sequence[tuple[str, str]] = ()
    """Metadata sent with every call (credentials for admin calls, say)."""
    etcd: Sequence[str] = ()
    """etcd endpoints (host:port, a list or a comma-separated string) to find
    the nodes in, instead of ``addresses``: the client calls the nodes of
    ``cluster`` registered there, opening connections to nodes that join and
    closing those to nodes that leave (after their calls in flight). Needs
    the ``aetcd`` package. Empty: use ``addresses``."""
    cluster: str = "flashstock"
    """With ``etcd``: the cluster whose nodes to call (its keys live under
    ``/flashstock/<cluster>/``)."""
    discovery_timeout_s: float = 10.0
    """With ``etcd``: how long starting the client may wait for etcd to
    answer and list at least one node before it raises ``Unavailable``."""
    tls_ca: str | bytes | None = None
    """TLS: the CA certificate(s) that signed the nodes' certificates, a PEM
    file's path or its bytes; calls then go over TLS to every node, the
    configured ones and those found in etcd. ``None``: plaintext (unless
    ``tls_cert`` is given: then TLS, trusting the system's CAs)."""
    tls_cert: str | bytes | None = None
    """Mutual TLS: the client's certificate (chain), a PEM path or bytes, for
    nodes that ask for one (``tls_client_ca``); needs ``tls_key``."""
    tls_key: str | bytes | None = None
    """Mutual TLS: the private key of ``tls_cert``, a PEM path or bytes."""
    tls_server_name: str = ""
    """TLS: the name the nodes' certificates must carry, instead of the host of
    the address dialled (an address by IP whose certificate names a host)."""
    token: str | None = field(default=None, repr=False)
    """A bearer token (JWT) sent with every call as ``authorization: Bearer
    <token>``, for nodes with ``auth = on``. ``None``: none (unless
    ``token_file``)."""
    token_file: str | None = None
    """A file holding the bearer token (read when the client is made; a
    trailing newline is dropped), instead of ``token``."""
    etcd_tls_ca: str = ""
    """With ``etcd``: PEM path of the CA that signed etcd's certificate; etcd
    is then reached over TLS. Empty: plaintext (unless ``etcd_tls_cert``)."""
    etcd_tls_cert: str = ""
    """With ``etcd``: PEM path of a client certificate for etcd; needs ``etcd_tls_key``."""
    etcd_tls_key: str = ""
    """With ``etcd``: PEM path of the private key of ``etcd_tls_cert``."""
    etcd_user: str = ""
    """With ``etcd``: the etcd user to read the nodes as (etcd auth enabled)."""
    etcd_password: str = field(default="", repr=False)
    """With ``etcd``: the password of ``etcd_user`` (never shown in a repr)."""

    def __post_init__(self) -> None:
        etcd = _split(self.etcd)
        object.__setattr__(self, "etcd", etcd)
        if etcd:
            if self.addresses is not None and _split(self.addresses):
                raise ValueError(
                    "give addresses or etcd, not both: with etcd the client calls the nodes registered there"
                )
            _check_etcd(etcd, self.cluster)
            object.__setattr__(self, "addresses", ())
        else:
            addresses = DEFAULT_ADDRESSES if self.addresses is None else _split(self.addresses)
            object.__setattr__(self, "addresses", addresses)
            if not addresses:
                raise ValueError("addresses: give at least one host:port (or etcd endpoints)")
            for address in addresses:
                if not _is_host_port(address):
                    raise ValueError(f"addresses: {address!r} is not host:port")
        if self.deadline_s <= 0 or self.attempt_timeout_s <= 0 or self.discovery_timeout_s <= 0:
            raise ValueError("deadline_s, attempt_timeout_s and discovery_timeout_s must be > 0")
        if self.connections_per_address < 1:
            raise ValueError("connections_per_address must be >= 1")
        if bool(self.etcd_tls_cert) != bool(self.etcd_tls_key):
            raise ValueError("etcd_tls_cert, etcd_tls_key: give both (a client certificate and its key) or neither")
        if bool(self.etcd_user) != bool(self.etcd_password):
            raise ValueError("etcd_user, etcd_password: give both or neither")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert, tls_key: give both (the client certificate and its key) or neither")
        if self.tls_server_name and not self.tls:
            raise ValueError("tls_server_name: needs tls_ca (or tls_cert and tls_key)")
        if self.token is not None and self.token_file is not None:
            raise ValueError("token, token_file: give one or neither")
        if self.token is not None and (not self.token.strip() or any(c in self.token for c in "\r\n")):
            raise ValueError("token: empty, or more than one line")

    @property
    def tls(self) -> bool:
        """True when the client calls the nodes over TLS."""
        return self.tls_ca is not None or self.tls_cert is not None


def _split(value: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def _check_etcd(endpoints: tuple[str, ...], cluster: str) -> None:
    # lockmgr's own rules, so what passes here is what the client can dial;
    # lockmgr imports aetcd only when a client is made, not here. Imported
    # here, not at the top: lockmgr's errors import the client's.
    from flashstock.lockmgr import check_id, grpc_target

    try:
        grpc_target(endpoints)
    except ValueError as exc:
        raise ValueError(f"etcd: {exc}") from None
    check_id("cluster", cluster)


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    # Our own retries (same request id, marked as a retry), not grpc's.
    ("grpc.enable_retries", 0),
    # Each channel its own connection, so several spread over a node's workers.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
)
"""The gRPC channel options of the client's channels; a caller building its own channel (a load
generator, a raw stub) uses them to behave as the client does."""


def channel_targets(config: ClientConfig, addresses: Sequence[str] | None = None) -> list[str]:
    """One target per connection to open, addresses interleaved.

    ``addresses``: the nodes to reach now (the live ones found in etcd);
    ``None``: the configured ``addresses``.
    """
    addresses = config.addresses if addresses is None else addresses
    return [a for _ in range(config.connections_per_address) for a in addresses or ()]


def channel_options(config: ClientConfig) -> tuple[tuple[str, int | str], ...]:
    """The options of ``config``'s channels: :data:`CHANNEL_OPTIONS`, and the TLS name override if any."""
    if config.tls_server_name:
        return (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", config.tls_server_name))
    return CHANNEL_OPTIONS
