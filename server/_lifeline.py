"""A child process's tie to the node's main process: when the parent dies, the child follows within a second.

A node is a main process and the children it spawns (serving workers, the
duties process). ``kill -9`` of the main process alone must not leave them
serving on its port or holding its etcd lease. Each child, first thing,
calls :func:`tie_to_parent`, which

- asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) to signal the child
  the moment its parent dies;
- then checks that the parent is still the process that started it: it may
  have died before the ``prctl`` call, and then no signal ever comes;
- starts a daemon thread that also checks ``os.getppid()`` every
  :data:`POLL_S`: the fallback on other systems, or when ``prctl`` fails.

A child with nothing to do before it goes (a serving worker: its calls in
flight are lost with the node anyway) gets SIGKILL from the kernel. A child
with last words (the duties process revokes its etcd lease, so its shards
fail over at once rather than one lease TTL later) gets
:data:`PARENT_DIED_SIGNAL`, blocked and waited for on the watcher thread;
the watcher arms SIGALRM (left at its default action, which ends the
process) to fire at the deadline, runs the last words, then exits. The
kernel's alarm ends the process on time even if the last words hang.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PARENT_DIED_SIGNAL = signal.SIGUSR1
"""What the kernel sends a child that has last words when its parent dies (blocked, and waited for)."""

POLL_S = 0.2
"""How often the watcher thread checks that the parent is still the same process."""

DEADLINE_S = 1.0
"""From the parent's death to the child's exit, at most (last words included)."""

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def parent_is_gone(expected_parent: int, current_parent: int) -> bool:
    """True when a process's parent is no longer ``expected_parent``.

    An orphan is re-parented (to init, or to the nearest subreaper), so a
    changed parent pid means the one that started us is dead; a pid is not
    reused while we, its child, are not yet reaped by it.
    """
    return current_parent != expected_parent


def _ask_kernel(signum: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, signum)``; False where there is no such call or it fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Lifeline:
    """A child's watch on its parent; made and started by :func:`tie_to_parent`."""

    def __init__(
        self,
        parent_pid: int,
        *,
        has_last_words: bool,
        kernel: bool = True,
        deadline_s: float = DEADLINE_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.parent_pid = parent_pid
        """The pid of the process that started this one."""
        self.has_last_words = has_last_words
        """True: the kernel sends :data:`PARENT_DIED_SIGNAL` and :attr:`last_words` run; False: SIGKILL."""
        self.kernel = kernel
        """Ask the kernel for a parent-death signal; False: only poll (as where there is no ``prctl``)."""
        self.deadline_s = deadline_s
        self.poll_s = poll_s
        self.kernel_notice = False
        """True when the kernel will signal this process at its parent's death (Linux)."""
        self.last_words: Callable[[float], None] | None = None
        """Run on the watcher thread once the parent is gone, given the seconds left; may be cut short."""

    def start(self) -> Lifeline:
        """Tie the process to its parent. Call from the main thread, before any other thread starts."""
        if self.has_last_words:
            # Blocked before any other thread exists, so every thread inherits the
            # mask and the signal waits for the watcher's sigtimedwait. (Were a
            # thread to have it unblocked, its default action would end the
            # process: dead all the same, only without last words.)
            signal.pthread_sigmask(signal.SIG_BLOCK, {PARENT_DIED_SIGNAL})
            # The deadline is SIGALRM's default action: no Python code needed to end the process.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        self.kernel_notice = self.kernel and _ask_kernel(PARENT_DIED_SIGNAL if self.has_last_words else signal.SIGKILL)
        if not self.kernel_notice:
            log.debug("no parent-death signal on this system: polling the parent pid every %.1f s", self.poll_s)
        if parent_is_gone(self.parent_pid, os.getppid()):
            # Gone before the kernel was asked: its signal will never come.
            os._exit(1)
        threading.Thread(target=self._watch, name="lifeline", daemon=True).start()
        return self

    def _notice(self) -> str:
        """Block until the parent is gone; returns how that was noticed."""
        waits = self.has_last_words and self.kernel_notice and hasattr(signal, "sigtimedwait")
        while True:
            signalled = False
            if waits:
                signalled = signal.sigtimedwait({PARENT_DIED_SIGNAL}, self.poll_s) is not None
            else:
                time.sleep(self.poll_s)
            # The kernel re-parents an orphan before it signals it, so this
            # holds whenever the signal is the kernel's: one sent by hand is ignored.
            if parent_is_gone(self.parent_pid, os.getppid()):
                return "the kernel's parent-death signal" if signalled else "a new parent pid"
            if signalled:
                log.warning(
                    "%s received while the parent (pid %d) lives: ignored", PARENT_DIED_SIGNAL.name, self.parent_pid
                )

    def _watch(self) -> None:
        self._leave(self._notice())

    def _leave(self, how: str) -> None:
        # Last words (if any) within the deadline, then exit; never returns.
        deadline = time.monotonic() + self.deadline_s
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, self.deadline_s)
        log.error("the node's main process (pid %d) is gone (%s): exiting", self.parent_pid, how)
        if self.last_words is not None:
            try:
                self.last_words(max(0.0, deadline - time.monotonic() - 0.1))
            except Exception as exc:  # noqa: BLE001 - leaving anyway
                log.warning("last words before exiting failed: %r", exc)
        os._exit(1)


def tie_to_parent(parent_pid: int, *, has_last_words: bool = False) -> Lifeline:
    """Make this process exit within :data:`DEADLINE_S` of ``parent_pid``'s death; call it first thing.

    ``has_last_words``: the process will set :attr:`Lifeline.last_words`
    (a short graceful step, cut at the deadline); without, it is killed by
    the kernel at once.
    """
    return Lifeline(parent_pid, has_last_words=has_last_words).start()
