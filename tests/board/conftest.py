"""Fixtures of the board's tests: Debian's chromium for pytest-playwright, and the sale figures a node would write.

Playwright's own browser downloads are not available here: the browser is
the system's ``/usr/bin/chromium`` (``apt-get install chromium``; ``make
setup`` as root installs it). Without it a browser test is skipped, or
fails under ``CI=true``, as :func:`tests.helpers.deploy.prometheus_tool`
does for Prometheus.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
"""The browser the tests drive, headless."""

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
"""Flags for a headless chromium in a container that must not reach the internet."""

ARTIFACTS = Path(__file__).parents[2] / "build" / "artifacts"
"""Where the browser tests save their screenshots (gitignored)."""


def _chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI=true: scripts/setup.sh installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium, or make setup as root)")
    return path


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch settings: Debian's chromium, headless, offline."""
    return {**browser_type_launch_args, "executable_path": _chromium(), "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture
def artifacts() -> Path:
    """The folder for screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
