"""Request checks find every bad field before any I/O."""

from flashstock.client import SkuDefinition
from flashstock.server.rpc import validate as v


def fields(violations):
    return {x.field for x in violations}


def test_take_accepts_a_good_request():
    assert v.take_violations("sku", "user", 1, "rid") == []


def test_take_names_every_bad_field():
    bad = v.take_violations("", "u" * 129, 0, "")
    assert fields(bad) == {"sku_id", "user_id", "qty", "request_id"}


def test_ids_limit_bytes_not_characters():
    assert v.id_violations("sku_id", "é" * 64) == []  # 128 bytes
    assert fields(v.id_violations("sku_id", "é" * 65)) == {"sku_id"}
    assert fields(v.id_violations("sku_id", "a\nb")) == {"sku_id"}


def test_qty_bounds():
    assert fields(v.qty_violations("qty", -1)) == {"qty"}
    assert fields(v.qty_violations("qty", v.MAX_QTY + 1)) == {"qty"}
    assert v.qty_violations("qty", v.MAX_QTY) == []


def test_put_window_end_before_start_and_negative_stock():
    bad = v.put_violations(SkuDefinition("s", -1, 0, 0, 2000, 1000), "r")
    assert fields(bad) == {"stock", "sale_end_ms"}
    assert v.put_violations(SkuDefinition("s", 0, 0, 0, 0, 1000), "r") == []


def test_batch_items_each_sku_once():
    assert fields(v.batch_violations("u", [("a", 1), ("a", 1)], "r")) == {"items[1].sku_id"}
    assert fields(v.batch_violations("u", [], "r")) == {"items"}
    assert fields(v.batch_violations("u", [("a", 0)], "r")) == {"items[0].qty"}


def test_adjust_and_hold_ttl():
    assert fields(v.adjust_violations("s", 0, "r")) == {"delta"}
    assert fields(v.hold_ttl_violations(-1)) == {"ttl_ms"}
    assert v.hold_ttl_violations(0) == []


def test_every_limit_is_held_exactly_by_a_lua_number():
    # Lua numbers are doubles: each value a script does arithmetic on must
    # stay an exact integer, also a total plus the largest delta.
    for limit in (v.MAX_QTY, v.MAX_STOCK, v.MAX_TIME_MS + v.MAX_HOLD_MS, 2 * v.MAX_STOCK):
        assert limit < 2**53


def test_put_refuses_times_past_year_9999_and_numbers_past_their_range():
    assert v.put_violations(SkuDefinition("s", 1, 0, 0, v.MAX_TIME_MS - 1, v.MAX_TIME_MS), "r") == []
    assert fields(v.put_violations(SkuDefinition("s", 1, 0, 0, 10**17, 0), "r")) == {"sale_start_ms"}
    assert fields(v.put_violations(SkuDefinition("s", 1, 0, 0, 0, 2**62), "r")) == {"sale_end_ms"}
    assert fields(v.put_violations(SkuDefinition("s", v.MAX_STOCK + 1, v.MAX_STOCK + 1, v.MAX_QTY + 1, 0, 0), "r")) == {
        "stock",
        "per_user_limit",
        "max_per_request",
    }
    assert fields(v.put_violations(SkuDefinition("s", 1, -1, -1, -1, -1), "r")) == {
        "per_user_limit",
        "max_per_request",
        "sale_start_ms",
        "sale_end_ms",
    }


def test_an_unknown_mode_is_refused_not_taken_as_fast():
    assert [v.mode_violations(mode) for mode in (0, 1, 2)] == [[], [], []]
    for mode in (3, 99, -1):
        assert fields(v.mode_violations(mode)) == {"mode"}


def test_the_longest_hold_is_a_day_or_half_the_record_ttl():
    assert v.max_hold_ms(86400) == 12 * 3600 * 1000
    assert v.max_hold_ms(3 * 86400) == v.MAX_HOLD_MS == 24 * 3600 * 1000
    assert v.max_hold_ms(10) == 5000
    assert v.hold_ttl_violations(5000, v.max_hold_ms(10)) == []
    assert fields(v.hold_ttl_violations(5001, v.max_hold_ms(10))) == {"ttl_ms"}


def test_adjust_delta_within_the_stock_range():
    assert v.adjust_violations("s", -v.MAX_STOCK, "r") == []
    assert fields(v.adjust_violations("s", v.MAX_STOCK + 1, "r")) == {"delta"}
    assert fields(v.adjust_violations("s", -(2**63), "r")) == {"delta"}


def test_list_checks_prefix_page_size_and_token():
    assert v.list_violations("", 0, "") == []
    assert v.list_violations("ab", v.MAX_PAGE_SIZE, "abc") == []
    assert fields(v.list_violations("", v.MAX_PAGE_SIZE + 1, "")) == {"page_size"}
    assert fields(v.list_violations("x" * 129, 0, "")) == {"prefix"}
    assert fields(v.list_violations("a\x00", 0, "")) == {"prefix"}
    # A token outside the prefix would list SKUs that do not start with it.
    assert fields(v.list_violations("b", 0, "a")) == {"page_token"}
    assert fields(v.list_violations("", 0, "t" * 129)) == {"page_token"}


def test_batch_violations_stay_small_whatever_the_ids():
    sku = "中" * 42
    bad = v.batch_violations("u", [(sku, 1)] * v.MAX_BATCH_ITEMS, "r")
    assert len(bad) == v.MAX_BATCH_ITEMS - 1
    assert all(sku not in x.description for x in bad)
    # Past the most items, the count is said once and the items not looked at.
    assert len(v.batch_violations("u", [("", 0)] * 10_000, "r")) == 1


def test_goals_and_price_in_range_are_taken():
    good = SkuDefinition(
        "s", 10, goal_units=10, goal_sellout_ms=30_000, goal_buyers=10, unit_price_minor=1999, currency="EUR"
    )
    assert v.put_violations(good, "r") == []
    assert v.put_violations(SkuDefinition("s", 10, goal_sellout_ms=v.MAX_GOAL_SELLOUT_MS), "r") == []


def test_negative_or_too_large_goals_and_price_are_refused():
    bad = SkuDefinition("s", 10, goal_units=-1, goal_sellout_ms=-1, goal_buyers=-1, unit_price_minor=-1)
    assert fields(v.put_violations(bad, "r")) == {"goal_units", "goal_sellout_ms", "goal_buyers", "unit_price_minor"}
    huge = SkuDefinition(
        "s",
        v.MAX_STOCK,
        goal_sellout_ms=v.MAX_GOAL_SELLOUT_MS + 1,
        unit_price_minor=v.MAX_PRICE_MINOR + 1,
        currency="EUR",
    )
    assert fields(v.put_violations(huge, "r")) == {"goal_sellout_ms", "unit_price_minor"}


def test_goals_the_stock_cannot_meet_are_refused():
    bad = v.put_violations(SkuDefinition("s", 10, goal_units=11, goal_buyers=11), "r")
    assert fields(bad) == {"goal_units", "goal_buyers"}
    assert "cannot be met" in bad[0].description


def test_a_price_needs_a_currency_code_and_a_currency_a_price():
    assert fields(v.put_violations(SkuDefinition("s", 1, unit_price_minor=100), "r")) == {"currency"}
    assert fields(v.put_violations(SkuDefinition("s", 1, currency="EUR"), "r")) == {"currency"}
    for code in ("eur", "EU", "EURO", "E1R", "ÉUR", "€"):
        assert fields(v.put_violations(SkuDefinition("s", 1, unit_price_minor=1, currency=code), "r")) == {"currency"}
