"""SKU changes and rebuild results are enums whose values are the strings stored and logged before them."""

from importlib import resources

from flashstock.server.duties.rebuild import RebuildResult
from flashstock.server.ledger import SkuChange


def _lua(name: str) -> str:
    return (resources.files("flashstock.server.store") / "lua" / f"{name}.lua").read_text()


def test_each_sku_change_keeps_its_name_and_its_log_letter():
    assert {c: (str(c), c.log_event) for c in SkuChange} == {
        SkuChange.PUT: ("put", "P"),
        SkuChange.ADJUST: ("adjust", "A"),
        SkuChange.PAUSE: ("pause", "Z"),
        SkuChange.RESUME: ("resume", "U"),
    }
    assert all(SkuChange.of_log_event(c.log_event) is c for c in SkuChange)
    assert SkuChange.of_log_event("D") is None  # a deduction's entry is no SKU change


def test_the_scripts_take_and_log_the_changes_by_those_names():
    adjust = _lua("adjust_sku")
    assert "op: 'adjust' | 'pause' | 'resume'" in adjust
    assert "'t', 'A'" in adjust and "op == 'pause' and 'Z' or 'U'" in adjust
    assert "'t', 'P'" in _lua("put_sku")


def test_rebuild_results_are_the_metric_labels_of_before():
    assert [str(r) for r in RebuildResult] == ["rebuilt", "ready", "fresh", "stale", "busy", "fenced"]
    assert RebuildResult.REBUILT == "rebuilt"  # callers and tests that compare with the string still agree
