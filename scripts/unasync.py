"""Generate the blocking clients (client/_sync.py) from the asyncio ones (client/_async.py).

One hand-written source, two clients that cannot drift: every rule below is
a plain text substitution, in the manner of httpcore's scripts/unasync.py.
``python scripts/unasync.py`` writes the file; ``--check`` exits 1 when the
committed file differs from what would be generated (the unit tests run it);
any other argument is refused (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "client" / "_async.py"
TARGET = ROOT / "client" / "_sync.py"

RULES = [
    (
        r'"""The asyncio clients: :class:`AsyncStockClient` and :class:`AsyncAdminClient`\.',
        '"""The blocking clients: :class:`StockClient` and :class:`AdminClient`.',
    ),
    (
        r"This is the hand-written source; ``_sync.py`` \(the blocking clients\) is\ngenerated from it by",
        "GENERATED from ``_async.py`` by",
    ),
    (
        r"``scripts/unasync.py``, and a test fails when the two\ndrift apart\.",
        "``scripts/unasync.py``: do not edit; edit\n``_async.py`` and run the script.",
    ),
    (r"\(asyncio\)", "(blocking)"),
    (r"^import asyncio\n", ""),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bgrpc\.aio\.", "grpc."),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\b_AsyncConnection\b", "_SyncConnection"),
    # AsyncStockClient -> StockClient, AsyncDiscovery -> Discovery: the
    # blocking twin of an Async* class has the same name without the prefix.
    (r"\bAsync([A-Z]\w*)\b", r"\1"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
]


def unasync(source: str) -> str:
    """The blocking twin of ``source``."""
    for pattern, replacement in RULES:
        source = re.sub(pattern, replacement, source, flags=re.MULTILINE)
    return source


def main(argv: list[str]) -> int:
    """Write the blocking clients, or with ``--check`` only compare; an unknown argument exits 2."""
    parser = argparse.ArgumentParser(description="Generate client/_sync.py from client/_async.py.")
    parser.add_argument("--check", action="store_true", help="exit 1 when client/_sync.py is stale; write nothing")
    args = parser.parse_args(argv)  # exits 2 on anything else: a typo must not rewrite the file
    generated = unasync(SOURCE.read_text())
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != generated:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python scripts/unasync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(generated)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
