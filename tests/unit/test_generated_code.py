"""Generated code stays generated: the sync client is the unasync twin of the async one."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_client_is_generated_from_the_async_one():
    unasync = _script("unasync")
    assert unasync.main(["--check"]) == 0, "client/_sync.py is stale: run python scripts/unasync.py"


def test_unasync_refuses_an_unknown_argument_and_writes_nothing():
    import subprocess
    import sys

    target = ROOT / "client" / "_sync.py"
    before = target.stat().st_mtime_ns
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--chek"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "unrecognized arguments: --chek" in run.stderr
    assert target.stat().st_mtime_ns == before


def test_no_generated_stub_is_tracked():
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if "_pb2" in f]
