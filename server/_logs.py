"""The node's log lines: text for a person, or one JSON object a line for a log pipeline.

``log_format = "text"`` writes ``time LEVEL logger[pid]: message``, as it
always did. ``log_format = "json"`` writes each line as a JSON object
(python-json-logger) with ``time``, ``level``, ``logger``, ``message``,
``process`` and ``node`` (the node's id: every line a node writes carries
it), and, in the lines that concern them, :data:`CONTEXT_FIELDS`: the call
sites pass those as ``extra=log_context(...)``, so the text format's messages
stay as they were and a pipeline need not parse them.
"""

from __future__ import annotations

import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
"""The text format's line (the one a node always wrote)."""

LOG_FORMATS = ("text", "json")
"""The values of the ``log_format`` setting."""

CONTEXT_FIELDS = ("request_id", "sku", "shard", "epoch")
"""The fields a log line about a request, a SKU or a shard carries besides its message (JSON format)."""


def log_context(
    *,
    request_id: str | None = None,
    sku: str | None = None,
    shard: int | None = None,
    epoch: int | None = None,
) -> dict[str, object]:
    """The ``extra=`` of a log call: the context fields that have a value (a standalone shard has no epoch)."""
    given = {"request_id": request_id or None, "sku": sku or None, "shard": shard, "epoch": epoch}
    return {name: value for name, value in given.items() if value is not None}


class NodeField(logging.Filter):
    """Puts the node's id on every record that reaches the handler it is added to (the ``node`` field)."""

    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = node
        """The id to put on the records; set again once the node's port is known."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__["node"] = self.node
        return True


NODE_FIELD = NodeField()
"""The filter of this process's log handler (logging is the process's: so is this)."""


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, process, and every ``extra`` field."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(process)d",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


def configure_logging(level: str, log_format: str, node: str) -> None:
    """Send this process's log lines to stderr at ``level``, as ``log_format`` (text or json), naming ``node``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    NODE_FIELD.node = node
    handler.addFilter(NODE_FIELD)
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # python-redis-lock logs every acquire and release at INFO.
    logging.getLogger("redis_lock").setLevel(max(logging.WARNING, logging.getLogger().level))


__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "NODE_FIELD",
    "TEXT_FORMAT",
    "NodeField",
    "configure_logging",
    "log_context",
]
