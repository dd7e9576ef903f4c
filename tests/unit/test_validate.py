"""Request checks find every bad field before any I/O."""

from flashstock.server import _validate as v


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
    bad = v.put_violations("s", -1, 0, 0, 2000, 1000, "r")
    assert fields(bad) == {"stock", "sale_end_ms"}
    assert v.put_violations("s", 0, 0, 0, 0, 1000, "r") == []


def test_batch_items_each_sku_once():
    assert fields(v.batch_violations("u", [("a", 1), ("a", 1)], "r")) == {"items[1].sku_id"}
    assert fields(v.batch_violations("u", [], "r")) == {"items"}
    assert fields(v.batch_violations("u", [("a", 0)], "r")) == {"items[0].qty"}


def test_adjust_and_hold_ttl():
    assert fields(v.adjust_violations("s", 0, "r")) == {"delta"}
    assert fields(v.hold_ttl_violations(-1)) == {"ttl_ms"}
    assert v.hold_ttl_violations(0) == []
