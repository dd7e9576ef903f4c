"""The SQL ledger (SQLite or PostgreSQL) and its migrations."""

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
    "schema_revision",
    "sqlite_url",
    "upgrade",
]
