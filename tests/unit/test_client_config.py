"""Client settings, the retry plan, and where the nodes come from."""

import random
import subprocess
import sys
from dataclasses import replace

import pytest

from flashstock.client import ClientConfig, RetryPolicy
from flashstock.client._config import DEFAULT_ADDRESSES, channel_targets
from flashstock.client._discovery import node_addresses
from flashstock.client._sync import _SyncConnection
from flashstock.lockmgr import NodeInfo
from flashstock.v1.stock_pb2_grpc import StockServiceStub


def test_addresses_from_a_comma_separated_string():
    assert ClientConfig(addresses="a:1,b:2").addresses == ("a:1", "b:2")


@pytest.mark.parametrize("bad", ["", "nohost", "host:port"])
def test_bad_addresses_are_refused(bad):
    with pytest.raises(ValueError, match="addresses"):
        ClientConfig(addresses=bad)


def test_connections_interleave_addresses():
    config = ClientConfig(addresses=("a:1", "b:2"), connections_per_address=2)
    assert channel_targets(config) == ["a:1", "b:2", "a:1", "b:2"]


def test_retry_delays_grow_with_jitter_and_stop():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, multiplier=2, max_attempts=5)
    delays = list(policy.delays(random.Random(1)))
    assert len(delays) == 4
    ceilings = [0.1, 0.2, 0.4, 0.4]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_one_attempt_means_no_retry():
    assert list(RetryPolicy(max_attempts=1).delays()) == []


# -- where the nodes come from: fixed addresses or etcd -------------------------


def test_without_etcd_the_client_calls_a_local_node():
    config = ClientConfig()
    assert config.addresses == DEFAULT_ADDRESSES and config.etcd == ()


def test_etcd_endpoints_from_a_comma_separated_string():
    config = ClientConfig(etcd="10.0.0.2:2379, 10.0.0.3:2379", cluster="prod")
    assert config.etcd == ("10.0.0.2:2379", "10.0.0.3:2379")
    assert config.addresses == ()  # they come from etcd
    assert config.cluster == "prod"


def test_addresses_and_etcd_together_are_refused():
    with pytest.raises(ValueError, match="addresses or etcd, not both"):
        ClientConfig(addresses="a:1", etcd="127.0.0.1:2379")


def test_empty_addresses_beside_etcd_count_as_none():
    assert ClientConfig(addresses="", etcd="127.0.0.1:2379").addresses == ()


def test_replace_switches_a_config_to_etcd_when_addresses_are_cleared():
    config = replace(ClientConfig(), etcd=("127.0.0.1:2379",), addresses=None)
    assert config.etcd == ("127.0.0.1:2379",) and config.addresses == ()


@pytest.mark.parametrize("bad", ["nohost", "host:port", "etcd-a:2379,etcd-b:2379"])
def test_bad_etcd_endpoints_are_refused(bad):
    with pytest.raises(ValueError, match="etcd"):
        ClientConfig(etcd=bad)


@pytest.mark.parametrize("bad", ["", "a/b", " padded"])
def test_bad_cluster_names_are_refused(bad):
    with pytest.raises(ValueError, match="cluster"):
        ClientConfig(etcd="127.0.0.1:2379", cluster=bad)


def test_the_discovery_timeout_must_be_positive():
    with pytest.raises(ValueError, match="discovery_timeout_s"):
        ClientConfig(etcd="127.0.0.1:2379", discovery_timeout_s=0)


def test_channel_targets_of_the_nodes_found():
    config = ClientConfig(etcd="127.0.0.1:2379", connections_per_address=2)
    assert channel_targets(config) == []
    assert channel_targets(config, ("a:1", "b:2")) == ["a:1", "b:2", "a:1", "b:2"]


def test_node_addresses_are_sorted_without_repeats():
    nodes = {
        "n2": NodeInfo("n2", "b:2", 0, 1),
        "n1": NodeInfo("n1", "a:1", 0, 2),
        "n3": NodeInfo("n3", "a:1", 0, 3),  # a node restarted under a new id
    }
    assert node_addresses(nodes) == ("a:1", "b:2")


def test_a_new_address_set_keeps_the_channels_of_the_nodes_that_stay():
    # Channels connect on their first call: none is made here.
    conn = _SyncConnection(ClientConfig(addresses="a:1,b:2", connections_per_address=2), StockServiceStub)
    retired = []
    try:
        by_address = {}
        for route in conn._routes:
            by_address.setdefault(route.address, set()).add(id(route.channel))
        retired = conn._use(("b:2", "c:3"))
        assert conn.addresses == ("b:2", "c:3")
        assert {id(channel) for channel in retired} == by_address["a:1"]
        assert {id(r.channel) for r in conn._routes if r.address == "b:2"} == by_address["b:2"]
        assert [r.address for r in conn._routes] == ["b:2", "c:3", "b:2", "c:3"]
    finally:
        for channel in retired:
            channel.close()
        conn.close()


def test_etcd_stays_an_optional_import():
    # A fresh interpreter: this one may have imported aetcd for other tests.
    code = (
        "import sys\n"
        "from flashstock.client import AsyncStockClient, ClientConfig, StockClient\n"
        "config = ClientConfig(etcd='127.0.0.1:2379')\n"
        "AsyncStockClient(config); StockClient(config)\n"
        "assert 'aetcd' not in sys.modules, 'aetcd imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
