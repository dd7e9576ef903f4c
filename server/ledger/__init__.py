"""The SQL ledger (SQLite or PostgreSQL) and its migrations."""

from flashstock.server.ledger._audit import AuditNote, AuditRecord, row_of_shard_change, shard_change_record
from flashstock.server.ledger._changes import SkuChange
from flashstock.server.ledger._ledger import (
    HEAD,
    INCIDENT_KINDS,
    Fenced,
    Incident,
    Ledger,
    LedgerError,
    Record,
    ShardSnapshot,
    SkuState,
    StaleGeneration,
    create_engine,
    schema_revision,
    sqlite_url,
    upgrade,
)

__all__ = [
    "AuditNote",
    "AuditRecord",
    "HEAD",
    "INCIDENT_KINDS",
    "Fenced",
    "Incident",
    "Ledger",
    "LedgerError",
    "Record",
    "ShardSnapshot",
    "SkuChange",
    "SkuState",
    "StaleGeneration",
    "create_engine",
    "row_of_shard_change",
    "schema_revision",
    "shard_change_record",
    "sqlite_url",
    "upgrade",
]
