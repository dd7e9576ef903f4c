"""What strangers can cause is logged at most once per kind per interval, with a count of the rest."""

from flashstock.server._log_gate import OTHER_KIND, LogGate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_message_per_kind_per_interval_then_the_count_of_the_held_back():
    clock = Clock()
    gate = LogGate(interval_s=60, clock=clock)

    assert gate.admit("bad utf-8") == 0
    assert [gate.admit("bad utf-8") for _ in range(1000)] == [None] * 1000
    clock.now += 59.9
    assert gate.admit("bad utf-8") is None
    clock.now += 0.1
    assert gate.admit("bad utf-8") == 1001
    assert gate.admit("bad utf-8") is None


def test_kinds_are_gated_apart():
    clock = Clock()
    gate = LogGate(interval_s=60, clock=clock)

    assert gate.admit(("Deduct", "bad utf-8")) == 0
    assert gate.admit(("Hold", "bad utf-8")) == 0
    assert gate.admit(("Deduct", "truncated")) == 0
    assert gate.admit(("Deduct", "bad utf-8")) is None


def test_kinds_past_the_table_share_one_gate():
    clock = Clock()
    gate = LogGate(interval_s=60, clock=clock, max_kinds=2)

    assert gate.admit("a") == 0 and gate.admit("b") == 0
    assert gate.admit("c") == 0  # as OTHER_KIND
    assert gate.admit("d") is None
    assert gate.admit(OTHER_KIND) is None
    assert gate.admit("a") is None
