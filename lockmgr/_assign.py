"""Which live node should own each shard: rendezvous hashing with operator overrides.

Pure: no etcd, no clock. The node feeds it what etcd says (live nodes, pins,
drains) and claims the shards it is given; every node computes the same map
from the same inputs, so they agree without talking to each other.

Rendezvous (highest random weight) hashing: shard ``s`` goes to the candidate
node ``n`` with the highest ``stable_hash(f"{s}/{n}")`` (ties, which 64-bit
weights make all but impossible, go to the greater node id). Its one
property we rely on: a node joining takes shards only for itself, and a node
leaving or draining gives up only its own shards; every other shard stays
where it is. ``stable_hash`` is BLAKE2b, so a Go or Java tool computes the
same map.

The overrides, in order:

- **drain** (``drains``): the node keeps running but should own nothing; its
  shards go to the best undrained live node. If every live node is drained,
  the drains are ignored: a shard must have an owner (its persister and
  reaper run there), and draining means "move away when there is somewhere
  to go", not "stop the cluster".
- **pin** (``pins``): the shard goes to the pinned node if that node is live
  and not drained; otherwise the pin is ignored and the hash decides, so a
  pin can never strand a shard on a dead or draining node. Pins of shards
  outside ``0 .. shards-1`` are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ._shards import stable_hash

_NO_PINS: Mapping[int, str] = MappingProxyType({})


def weight(shard: int, node: str) -> int:
    """The rendezvous weight of ``node`` for ``shard``: ``stable_hash(f"{shard}/{node}")``."""
    return stable_hash(f"{shard}/{node}")


def assign(
    shards: int,
    nodes: Iterable[str],
    pins: Mapping[int, str] = _NO_PINS,
    drains: Iterable[str] = (),
) -> dict[int, str]:
    """The owner of every shard ``0 .. shards-1`` among the live ``nodes``.

    ``pins`` (shard -> node) and ``drains`` (node ids) are the operator's
    overrides, applied as the module docstring says. No live node: an empty
    map (nobody can own anything).
    """
    if shards < 0:
        raise ValueError(f"shards must be >= 0, not {shards}")
    live = sorted(set(nodes))
    if not live:
        return {}
    drained = set(drains)
    candidates = [n for n in live if n not in drained] or live
    eligible = set(candidates)
    out: dict[int, str] = {}
    for shard in range(shards):
        pinned = pins.get(shard)
        if pinned is not None and pinned in eligible:
            out[shard] = pinned
        else:
            out[shard] = max(candidates, key=lambda n: (weight(shard, n), n))
    return out


def moves(before: Mapping[int, str], after: Mapping[int, str]) -> dict[int, tuple[str | None, str | None]]:
    """The shards whose owner differs between two maps: ``shard -> (old, new)``.

    ``None`` stands for "no owner" (a shard missing from that map).
    """
    out: dict[int, tuple[str | None, str | None]] = {}
    for shard in sorted(set(before) | set(after)):
        old, new = before.get(shard), after.get(shard)
        if old != new:
            out[shard] = (old, new)
    return out
