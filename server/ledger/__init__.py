"""The SQL ledger (SQLite or PostgreSQL) and its migrations."""

from flashstock.server.ledger._ledger import (
    HEAD,
    Fenced,
    Ledger,
    LedgerError,
    Record,
    ShardSnapshot,
    StaleGeneration,
    SkuState,
    create_engine,
    schema_revision,
    sqlite_url,
    upgrade,
)

__all__ = [
    "HEAD",
    "Fenced",
    "Ledger",
    "LedgerError",
    "Record",
    "ShardSnapshot",
    "StaleGeneration",
    "SkuState",
    "create_engine",
    "schema_revision",
    "sqlite_url",
    "upgrade",
]
