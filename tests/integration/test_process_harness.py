"""The one process harness (flashstock.server.local.procs) keeps its promises on plain process trees.

Every process the demo, the bench, the local cluster and the tests start is
ended through it, so what it promises is checked here on its own: a parent
and a child of a few lines of Python, the child deaf to SIGTERM and not told
of its parent's death (unlike a node's workers, which follow their parent by
themselves), so that only the harness can end it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from flashstock.server.local.procs import (
    ProcessError,
    family,
    gone,
    kill_family,
    pause_family,
    pipe_reader,
    resume_family,
    signal_all,
    stop_family,
    wait_for_line,
)

DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
"""A process deaf to SIGTERM."""

TREE = f"""
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {DEAF!r}])
if sys.argv[1] == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", child.pid, flush=True)
time.sleep(600)
"""
"""A parent (deaf to SIGTERM with ``deaf``) and a child deaf to SIGTERM; ``ready <child pid>`` once both run."""


@pytest.fixture
def tree(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen]:
    mode = getattr(request, "param", "polite")
    parent = subprocess.Popen([sys.executable, "-c", TREE, mode], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    members: list[psutil.Process] = []
    try:
        wait_for_line(parent, pipe_reader(parent), name="tree", line="ready", timeout=30)
        members = family(parent.pid)
        yield parent
    finally:
        signal_all(members, signal.SIGKILL)
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()


def test_family_is_the_parent_first_then_everything_under_it(tree):
    members = family(tree.pid)
    assert members[0].pid == tree.pid
    assert len(members) == 2


def test_stop_ends_a_child_deaf_to_sigterm_once_its_parent_exited(tree):
    members = family(tree.pid)
    assert stop_family(tree, timeout=5) == "stopped"
    assert all(gone(p) for p in members)
    assert tree.returncode is not None  # our Popen collected its status


@pytest.mark.parametrize("tree", ["deaf"], indirect=True)
def test_stop_kills_the_whole_family_when_the_parent_lingers(tree):
    members = family(tree.pid)
    assert stop_family(tree, timeout=1) == "killed"
    assert all(gone(p) for p in members)


def test_stop_ends_the_children_known_from_before_after_the_parent_was_killed(tree):
    members = family(tree.pid)
    tree.kill()  # the child now belongs to another parent: only `known` still names it
    tree.wait()
    assert stop_family(tree, known=members) == "not running"
    assert all(gone(p) for p in members)


def test_kill_ends_the_parent_and_its_children(tree):
    members = family(tree.pid)
    kill_family(tree)
    assert all(gone(p) for p in members)
    assert tree.returncode == -9


def test_pause_stops_every_member_and_resume_wakes_them(tree):
    members = family(tree.pid)
    pause_family(tree.pid)
    assert {p.status() for p in members} == {psutil.STATUS_STOPPED}
    resume_family(tree.pid)
    assert psutil.STATUS_STOPPED not in {p.status() for p in members}


def test_a_process_that_exits_before_its_ready_line_is_reported_with_its_output():
    doomed = "print('no luck', flush=True); raise SystemExit(3)"
    proc = subprocess.Popen([sys.executable, "-c", doomed], stdout=subprocess.PIPE)
    with pytest.raises(ProcessError, match=r"exited \(3\) before it was ready: no luck"):
        wait_for_line(proc, pipe_reader(proc), name="doomed", line="ready", timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def test_a_process_late_with_its_ready_line_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE)
    with pytest.raises(ProcessError, match="not ready within 0.5 s"):
        wait_for_line(proc, pipe_reader(proc), name="slow", line="ready", timeout=0.5)
    assert proc.returncode == -9
    assert proc.stdout is not None
    proc.stdout.close()
