"""The etcd key layout of one flashstock cluster.

Every key lives under ``/flashstock/<cluster>/``::

    config/shards        "64"                        written once, at cluster init
    config/<setting>     "<value>"                   bound once, by the first node (ledger_id, request_ttl_s)
    nodes/<node>         {"address", "started_ms"}   bound to the node's session lease
    owners/<shard>       {"node", "since_ms"}        bound to the owner's session lease;
                                                     its create revision is the shard's epoch
    pins/<shard>         "<node>"                    operator override: own it there
    drains/<node>        {"since_ms"}                operator override: own nothing

Shards are written in decimal without padding. Cluster and node ids may not
contain ``/`` (it would break the prefixes) and are at most 128 characters.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/flashstock/"
"""The prefix of every key flashstock writes in etcd."""

_MAX_ID = 128


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a usable cluster or node id, else ``ValueError`` naming ``kind``."""
    if not isinstance(value, str) or not value or len(value) > _MAX_ID:
        raise ValueError(f"{kind} must be 1 to {_MAX_ID} characters, not {value!r}")
    if "/" in value or not value.isprintable() or value != value.strip():
        raise ValueError(f"{kind} may not contain '/', spaces at its ends or control characters: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """The etcd key names of one cluster (see the module docstring for the values)."""

    cluster: str
    """The cluster's name: several clusters can share one etcd."""

    def __post_init__(self) -> None:
        check_id("cluster", self.cluster)

    @property
    def prefix(self) -> str:
        """``/flashstock/<cluster>/``."""
        return f"{ROOT}{self.cluster}/"

    @property
    def shards(self) -> str:
        """The cluster's shard count, written once."""
        return f"{self.prefix}config/shards"

    def setting(self, name: str) -> str:
        """A setting every node of the cluster must share, bound by the first node."""
        return f"{self.prefix}config/{check_id('setting', name)}"

    @property
    def nodes(self) -> str:
        """Prefix of the live nodes."""
        return f"{self.prefix}nodes/"

    def node(self, node_id: str) -> str:
        """A node's registration."""
        return f"{self.nodes}{check_id('node id', node_id)}"

    @property
    def owners(self) -> str:
        """Prefix of the shard owners."""
        return f"{self.prefix}owners/"

    def owner(self, shard: int) -> str:
        """A shard's owner key; its create revision is the shard's epoch."""
        return f"{self.owners}{_shard(shard)}"

    @property
    def pins(self) -> str:
        """Prefix of the pins."""
        return f"{self.prefix}pins/"

    def pin(self, shard: int) -> str:
        """A shard's pin."""
        return f"{self.pins}{_shard(shard)}"

    @property
    def drains(self) -> str:
        """Prefix of the drains."""
        return f"{self.prefix}drains/"

    def drain(self, node_id: str) -> str:
        """A node's drain mark."""
        return f"{self.drains}{check_id('node id', node_id)}"

    @property
    def audit(self) -> str:
        """Prefix of the audit records of operator changes, waiting to be copied into the ledger."""
        return f"{self.prefix}audit/"


def _shard(shard: int) -> int:
    if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
        raise ValueError(f"shard must be an int >= 0, not {shard!r}")
    return shard


def tail(key: bytes, prefix: str) -> str:
    """What follows ``prefix`` in ``key`` (a shard number or a node id)."""
    return key.decode()[len(prefix) :]
