"""The node's log lines as a pipeline reads them: JSON fields, context fields, how loud a rebuild is.

Pure: records are made and formatted here, no process logs anything. The
node's own lines, from outside, are in tests/integration/test_json_logs.py.
"""

from __future__ import annotations

import json
import logging

import pytest

from flashstock.server._logs import NodeField, json_formatter, log_context
from flashstock.server.duties.rebuild import rebuild_log_level


def _line(extra: dict[str, object], node: str = "node-a", exc_info: bool = False) -> dict[str, object]:
    record = logging.LogRecord(
        "flashstock.server.duties.shard", logging.WARNING, __file__, 1, "shard %d fenced", (7,), None
    )
    if exc_info:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    assert NodeField(node).filter(record)
    return json.loads(json_formatter().format(record))


def test_a_json_line_has_the_base_fields_and_the_node():
    line = _line({})
    assert line["level"] == "WARNING"
    assert line["logger"] == "flashstock.server.duties.shard"
    assert line["message"] == "shard 7 fenced"  # formatted, as in the text format
    assert isinstance(line["process"], int)
    assert line["node"] == "node-a"
    assert str(line["time"]).endswith("+00:00")  # ISO 8601, UTC
    assert not {"levelname", "name", "msg", "args"} & set(line)


def test_a_json_line_carries_the_context_given_as_extra():
    line = _line(log_context(request_id="r-1", sku="hot", shard=7, epoch=3))
    assert (line["request_id"], line["sku"], line["shard"], line["epoch"]) == ("r-1", "hot", 7, 3)


def test_a_failure_keeps_its_traceback_in_one_line():
    line = _line({}, exc_info=True)
    assert "RuntimeError: boom" in str(line["exc_info"])


def test_context_leaves_out_what_a_line_does_not_have():
    # A standalone node's shards have no epoch; shard 0 is a shard all the same.
    assert log_context(shard=0, epoch=None) == {"shard": 0}
    assert log_context(request_id="", sku="hot") == {"sku": "hot"}
    assert log_context() == {}


@pytest.mark.parametrize(
    "generation, skus, level",
    [
        (1, 0, logging.DEBUG),  # a first install: nothing was lost (the warden's one line sums them up)
        (2, 0, logging.INFO),  # an empty shard whose Redis state was lost
        (1, 3, logging.WARNING),  # SKUs read back from the ledger
        (5, 3, logging.WARNING),
    ],
)
def test_how_loud_a_rebuild_is(generation, skus, level):
    assert rebuild_log_level(generation, skus) == level
