"""Each range the node enforces is the one the proto comment of its field states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flashstock.server.rpc import validate as v

PROTOS = Path(__file__).parents[2] / "protos" / "flashstock" / "v1"


def field_comment(proto: str, message: str, field: str) -> str:
    """The comment lines just above ``field`` in ``message`` of ``proto``, joined."""
    text = (PROTOS / proto).read_text()
    body = re.search(rf"^message {message} {{\n(.*?)^}}", text, re.M | re.S)
    assert body, f"{message} not in {proto}"
    comment: list[str] = []
    for line in body[1].splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment.append(line[2:].strip())
        elif re.match(rf"(repeated )?\w+ {field} = \d+;", line):
            return " ".join(comment)
        else:
            comment = []
    raise AssertionError(f"{message}.{field} not in {proto}")


@pytest.mark.parametrize(
    ("proto", "message", "field", "says"),
    [
        ("stock.proto", "DeductRequest", "sku_id", f"1-{v.MAX_ID_BYTES} bytes"),
        ("stock.proto", "DeductRequest", "qty", f"1 to {v.MAX_QTY}"),
        ("stock.proto", "HoldRequest", "ttl_ms", f"0 to the node's longest hold: {v.MAX_HOLD_MS}"),
        ("stock.proto", "HoldRequest", "ttl_ms", "half the node's request_ttl_s"),
        ("stock.proto", "BatchDeductRequest", "items", f"1-{v.MAX_BATCH_ITEMS} items"),
        ("admin.proto", "PutSkuRequest", "stock", f"0 to {v.MAX_STOCK}"),
        ("admin.proto", "PutSkuRequest", "per_user_limit", f"0 to {v.MAX_STOCK}"),
        ("admin.proto", "PutSkuRequest", "max_per_request", f"0 to {v.MAX_QTY}"),
        ("admin.proto", "PutSkuRequest", "sale_start_ms", f"0 to {v.MAX_TIME_MS}"),
        ("admin.proto", "PutSkuRequest", "sale_end_ms", f"0 to {v.MAX_TIME_MS}"),
        ("admin.proto", "PutSkuRequest", "goal_units", f"0 to {v.MAX_STOCK} and at most `stock`"),
        ("admin.proto", "PutSkuRequest", "goal_sellout_ms", f"0 to {v.MAX_GOAL_SELLOUT_MS}"),
        ("admin.proto", "PutSkuRequest", "goal_buyers", f"0 to {v.MAX_STOCK} and at most `stock`"),
        ("admin.proto", "PutSkuRequest", "unit_price_minor", f"0 to {v.MAX_PRICE_MINOR}"),
        ("admin.proto", "PutSkuRequest", "currency", "Required when unit_price_minor > 0, else empty"),
        ("admin.proto", "ListSkusRequest", "prefix", f"0-{v.MAX_ID_BYTES} bytes"),
        ("admin.proto", "ListSkusRequest", "page_size", f"0 to {v.MAX_PAGE_SIZE}; 0 = {v.DEFAULT_PAGE_SIZE}"),
        ("admin.proto", "AdjustStockRequest", "delta", f"-{v.MAX_STOCK} to {v.MAX_STOCK}, not 0"),
        ("admin.proto", "AdjustStockRequest", "delta", f"nor above {v.MAX_STOCK}"),
    ],
)
def test_the_proto_states_the_range_the_node_enforces(proto, message, field, says):
    assert says in field_comment(proto, message, field)


def test_the_proto_lists_exactly_the_modes_the_node_takes():
    text = (PROTOS / "admin.proto").read_text()
    numbers = {int(n) for n in re.findall(r"^\s*MODE_\w+ = (\d+);", text, re.M)}
    assert numbers == v.KNOWN_MODES
