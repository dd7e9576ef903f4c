"""The board's public surface (``flashstock.server.board``) and its ``--node`` syntax."""

from __future__ import annotations

import pytest

import flashstock.server.board as board
from flashstock.server.board import NodeAddress
from flashstock.server.local.cluster import board_auth_args


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


def test_the_board_of_a_local_cluster_takes_the_nodes_auth_flags_when_they_take_tokens() -> None:
    on = ["--grace-s", "1", "--auth", "on", "--auth-jwt-keys", "k.secret", "--auth-jwt-issuer=i"]
    assert board_auth_args([*on, "--auth-jwt-audience", "a"]) == [
        *("--auth", "on", "--auth-jwt-keys", "k.secret", "--auth-jwt-issuer", "i", "--auth-jwt-audience", "a")
    ]
    assert board_auth_args(["--grace-s", "1"]) == []
    assert board_auth_args(["--auth", "off", "--auth-jwt-keys", "k"]) == []
    # Certificates only: the board takes tokens only, so its page stays as it was.
    assert board_auth_args(["--auth", "on", "--auth-cert-roles", "r.toml", "--tls-client-ca", "ca.pem"]) == []
