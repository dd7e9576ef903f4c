"""The audit trail: what an admin change's record holds, and how it is made from where it travels.

A SKU change (PutSku, AdjustStock, PauseSku, ResumeSku) travels in the
shard log: the servicer hands its script an :class:`AuditNote` (who, from
where, the method and its arguments) as JSON, and the script adds it to the
change's own log entry with the SKU's hash before and after (fields ``au``,
``ab``, ``aa``). The persister writes the ``audit`` row in the transaction
that applies the entry (:func:`row_of_entry`), keyed by the entry, so a
replay writes it once.

A shard change (pin, unpin, drain, undrain, rebalance) is written to etcd
with its audit record in one transaction (``<cluster prefix>audit/<ms>-<uuid>``);
a node's duty copies those into the ledger, keyed by the etcd key
(:func:`row_of_shard_change`), then deletes them from etcd.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SKU_FIGURES = {
    "total": "total",
    "avail": "available",
    "held": "held",
    "conf": "confirmed",
    "paused": "paused",
    "lim": "per_user_limit",
    "maxq": "max_per_request",
    "start": "sale_start_ms",
    "end": "sale_end_ms",
    "mode": "mode",
    "sale": "sale",
    "gu": "goal_units",
    "gs": "goal_sellout_ms",
    "gb": "goal_buyers",
    "pr": "unit_price_minor",
    "cur": "currency",
}
"""A SKU hash's fields (see ``_lib.lua``) by the names the audit trail shows them under.

A field not named here keeps its hash name; ``sv`` (the stock version, an
ordering detail) is left out."""

_LEFT_OUT = frozenset({"sv"})
_TEXT = frozenset({"mode", "cur"})

LOG_FIELDS = ("au", "ab", "aa")
"""The log entry's fields of an audit record: the note (JSON), the SKU's hash before and after (JSON)."""


@dataclass(frozen=True)
class AuditNote:
    """Who makes an admin change, from where, and how: what the servicer hands the change's script."""

    identity: str
    """The caller's identity (``anonymous`` while auth is off)."""
    peer: str
    """Where the call came from (grpc's peer string)."""
    method: str
    """The RPC (``PutSku``, ``AdjustStock``, ``PauseSku``, ``ResumeSku``)."""
    args: Mapping[str, Any] = field(default_factory=dict)
    """The call's arguments, as JSON values."""

    def encode(self) -> str:
        """The note as the script's argument: a JSON object."""
        return json.dumps(
            {"who": self.identity, "peer": self.peer, "method": self.method, "args": dict(self.args)},
            separators=(",", ":"),
            sort_keys=True,
        )


@dataclass(frozen=True)
class AuditRecord:
    """One row of the audit trail."""

    at_ms: int
    """When the change was made (unix ms; Redis's clock for a SKU change, the CLI's for a shard change)."""
    identity: str
    """Who made it."""
    peer: str
    """From where: grpc's peer string, or ``<user>@<host>`` of the CLI."""
    method: str
    """What: ``PutSku``, ``AdjustStock``, ``PauseSku``, ``ResumeSku``, ``shards.pin``, ``shards.drain``, ..."""
    sku_id: str | None
    """The SKU changed; None for a shard change."""
    shard: int | None
    """The SKU's shard, or the shard pinned or unpinned; None for a change of no one shard (drain)."""
    args: dict[str, Any]
    """The call's arguments."""
    before: dict[str, Any] | None
    """The SKU's figures before (:data:`SKU_FIGURES`); None for a SKU that did not exist, or a shard change."""
    after: dict[str, Any] | None
    """The SKU's figures after; None for a shard change."""
    source: str
    """Where it came from: ``log/<shard>/<entry id>`` or ``etcd/<key>``."""

    def as_json(self) -> dict[str, Any]:
        """The record as one JSON object (what ``flashstock audit ls --format json`` prints)."""
        return {
            "at_ms": self.at_ms,
            "identity": self.identity,
            "peer": self.peer,
            "method": self.method,
            "sku_id": self.sku_id,
            "shard": self.shard,
            "args": self.args,
            "before": self.before,
            "after": self.after,
            "source": self.source,
        }


def _value(name: str, raw: Any) -> Any:
    if name in _TEXT or not isinstance(raw, str):
        return raw
    try:
        number = int(raw)
    except ValueError:
        return raw
    return bool(number) if name == "paused" else number


def sku_figures(encoded: str) -> dict[str, Any] | None:
    """A SKU's figures from a script's JSON of its hash (HGETALL: a flat list, or ``{}`` when empty).

    None when the hash was empty (a SKU put for the first time has no figures before).
    """
    decoded = json.loads(encoded) if encoded else None
    if not decoded:
        return None
    if isinstance(decoded, list):
        pairs = dict(zip(decoded[::2], decoded[1::2], strict=True))
    elif isinstance(decoded, dict):
        pairs = decoded
    else:
        raise ValueError(f"not a SKU hash: {encoded[:80]!r}")
    out: dict[str, Any] = {}
    for raw_name, raw in sorted(pairs.items()):
        if raw_name in _LEFT_OUT:
            continue
        name = SKU_FIGURES.get(str(raw_name), str(raw_name))
        out[name] = _value(name, raw)
    return out


def log_source(shard: int, entry_id: str) -> str:
    """The ``source`` of a SKU change's record: its log entry, one per change
    (a rebuilt log's ids pass the old ones)."""
    return f"log/{shard}/{entry_id}"


def row_of_entry(shard: int, entry_id: str, fields: Mapping[str, str], at_ms: int) -> dict[str, Any] | None:
    """The ``audit`` row of a SKU change's log entry; None for an entry without a note (older nodes, tests)."""
    note = fields.get("au")
    if not note:
        return None
    decoded = json.loads(note)
    before = sku_figures(fields.get("ab", ""))
    after = sku_figures(fields.get("aa", ""))
    return {
        "at_ms": at_ms,
        "identity": str(decoded.get("who", ""))[:256],
        "peer": str(decoded.get("peer", ""))[:256],
        "method": str(decoded.get("method", ""))[:64],
        "sku_id": fields.get("k"),
        "shard": shard,
        "args": json.dumps(decoded.get("args", {}), sort_keys=True),
        "before": None if before is None else json.dumps(before, sort_keys=True),
        "after": None if after is None else json.dumps(after, sort_keys=True),
        "source": log_source(shard, entry_id),
    }


def shard_change_record(at_ms: int, identity: str, peer: str, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The value a shard change writes beside itself in etcd (as JSON), for :func:`row_of_shard_change`."""
    shard = args.get("shard")
    return {
        "at_ms": at_ms,
        "identity": identity,
        "peer": peer,
        "method": method,
        "shard": shard if isinstance(shard, int) else None,
        "args": dict(args),
    }


def row_of_shard_change(key: str, value: bytes) -> dict[str, Any]:
    """The ``audit`` row of a shard change's record in etcd
    (key ``key``, value as :func:`shard_change_record` made it)."""
    decoded = json.loads(value)
    shard = decoded.get("shard")
    return {
        "at_ms": int(decoded["at_ms"]),
        "identity": str(decoded.get("identity", ""))[:256],
        "peer": str(decoded.get("peer", ""))[:256],
        "method": str(decoded.get("method", ""))[:64],
        "sku_id": None,
        "shard": shard if isinstance(shard, int) else None,
        "args": json.dumps(decoded.get("args", {}), sort_keys=True),
        "before": None,
        "after": None,
        "source": f"etcd/{key}"[:512],
    }


def record_of_row(row: Mapping[Any, Any]) -> AuditRecord:
    """An ``audit`` row as read back from the ledger."""
    return AuditRecord(
        at_ms=int(row["at_ms"]),
        identity=row["identity"],
        peer=row["peer"],
        method=row["method"],
        sku_id=row["sku_id"],
        shard=row["shard"],
        args=json.loads(row["args"] or "{}"),
        before=None if row["before"] is None else json.loads(row["before"]),
        after=None if row["after"] is None else json.loads(row["after"]),
        source=row["source"],
    )
