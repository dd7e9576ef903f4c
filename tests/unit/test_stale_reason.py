"""Telling a Redis that came back older than the ledger (pure decisions)."""

import pytest

from flashstock.server._incarnation import run_id_of
from flashstock.server.duties.rebuild import stale_reason


@pytest.mark.parametrize(
    ("cursor", "ledger_gen", "redis_gen", "persisted", "holds_entry", "stale"),
    [
        (None, 1, 1, None, False, False),  # nothing persisted yet
        ((1, "1700-5"), 1, 1, "1700-5", False, False),  # told of the cursor: holds all of it
        ((1, "1700-5"), 1, 1, "1700-9", False, False),
        ((1, "1700-5"), 1, 1, "1700-4", True, False),  # committed, not yet announced: the entry is there
        ((1, "1700-5"), 1, 1, None, True, False),
        ((1, "1700-5"), 1, 1, "1700-4", False, True),  # neither entry nor word of it: an older Redis
        ((1, "1700-10"), 1, 1, "1700-9", False, True),  # ids compare as (ms, seq), not as text
        ((1, "1700-5"), 1, 1, None, False, True),
        ((1, "1700-5"), 2, 2, None, False, False),  # rebuilt since that commit: the rebuild read it
        ((1, "1700-5"), 2, 1, "1700-5", False, True),  # the ledger began a rebuild this Redis never saw
        ((3, "1700-5"), 3, 2, None, True, True),
    ],
)
def test_stale_reason(cursor, ledger_gen, redis_gen, persisted, holds_entry, stale):
    reason = stale_reason(cursor, ledger_gen, redis_gen, persisted, holds_entry)
    assert (reason is not None) == stale, reason


def test_run_id_is_read_from_info_server():
    info = b"# Server\r\nredis_version:7.0.15\r\nrun_id:3f1c2e\r\ntcp_port:6379\r\n"
    assert run_id_of(info) == "3f1c2e"
    with pytest.raises(ValueError):
        run_id_of("# Server\r\n")
