"""The board's public surface (``flashstock.server.board``) and its ``--node`` syntax."""

from __future__ import annotations

import pytest

import flashstock.server.board as board
from flashstock.server.board import NodeAddress


def test_board_exports() -> None:
    assert board.__all__ == ["BoardSources", "Collector", "NodeAddress", "NodeTls", "create_app", "node_addresses"]
    for name in board.__all__:
        assert getattr(board, name).__doc__, name


def test_a_node_is_an_address_and_maybe_its_metrics() -> None:
    assert NodeAddress.parse("10.0.0.7:50051") == NodeAddress("10.0.0.7:50051", "", "10.0.0.7:50051")
    assert NodeAddress.parse("10.0.0.7:50051=10.0.0.7:9100").metrics == "10.0.0.7:9100"


@pytest.mark.parametrize("text", ["10.0.0.7", ":50051", "h:0", "h:70000", "h:1=nohost", "h:1=h:x"])
def test_a_malformed_node_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--node"):
        NodeAddress.parse(text)
