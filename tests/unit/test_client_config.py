"""Client settings and the retry plan."""

import random

import pytest

from flashstock.client import ClientConfig, RetryPolicy
from flashstock.client._config import channel_targets


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
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))


def test_one_attempt_means_no_retry():
    assert list(RetryPolicy(max_attempts=1).delays()) == []
