"""Client settings: frozen values with defaults, and the pure retry plan."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries UNAVAILABLE and DEADLINE_EXCEEDED, always with the same request id."""

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


@dataclass(frozen=True)
class ClientConfig:
    """Where a client sends calls and how long it keeps trying."""

    addresses: Sequence[str] = ("127.0.0.1:50051",)
    """Node addresses (host:port); calls are spread over them round-robin, and a
    retry goes to the next one."""
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

    def __post_init__(self) -> None:
        if isinstance(self.addresses, str):
            object.__setattr__(self, "addresses", tuple(a for a in self.addresses.split(",") if a))
        if not self.addresses:
            raise ValueError("addresses: give at least one host:port")
        for address in self.addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"addresses: {address!r} is not host:port")
        if self.deadline_s <= 0 or self.attempt_timeout_s <= 0:
            raise ValueError("deadline_s and attempt_timeout_s must be > 0")
        if self.connections_per_address < 1:
            raise ValueError("connections_per_address must be >= 1")


def channel_targets(config: ClientConfig) -> list[str]:
    """One target per connection to open, addresses interleaved."""
    return [a for _ in range(config.connections_per_address) for a in config.addresses]
