"""Comparing a node's settings with the bound ones: pure, every case."""

import pytest

from flashstock.lockmgr import SettingMismatch, ShardCountMismatch
from flashstock.server._binding import BoundSettings, explain, first_mismatch

MINE = BoundSettings(ledger_id="L-a", shards=64, request_ttl_s=86400, cluster="")


def test_equal_settings_agree_and_absent_ones_are_not_compared():
    assert first_mismatch(MINE, MINE.fields(), "Redis") is None
    assert first_mismatch(MINE, {"shards": "64"}, "Redis") is None  # bound by an older flashstock


@pytest.mark.parametrize(
    ("setting", "bound", "expected"),
    [
        ("ledger_id", "L-b", "ledger_id: this node has L-a, Redis has L-b (bound by the first node)"),
        ("shards", "8", "shards: this node has 64, Redis has 8 (bound by the first node)"),
        ("request_ttl_s", "600", "request_ttl_s: this node has 86400, Redis has 600 (bound by the first node)"),
        ("cluster", "prod", "cluster: this node has none (standalone), Redis has 'prod' (bound by the first node)"),
    ],
)
def test_a_differing_setting_is_named_with_both_values(setting, bound, expected):
    error = first_mismatch(MINE, {**MINE.fields(), setting: bound}, "Redis")

    assert isinstance(error, SettingMismatch) and str(error) == expected
    assert error.setting == setting
    assert explain(error).startswith(expected + ": ")  # with what to do about it


def test_the_first_differing_setting_is_named_in_a_fixed_order():
    bound = {**MINE.fields(), "request_ttl_s": "600", "ledger_id": "L-b"}
    assert first_mismatch(MINE, bound, "Redis").setting == "ledger_id"


def test_a_shard_count_mismatch_from_etcd_is_explained_as_it_is():
    error = ShardCountMismatch("prod", 16, 8)
    assert explain(error) == str(error)
