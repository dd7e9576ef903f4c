"""Fixtures of the board's tests: Debian's chromium, headless, as pytest-playwright's ``browser`` and ``page``.

Playwright's own browser downloads are not available here: the browser is
the system's ``/usr/bin/chromium`` (``apt-get install chromium``; ``make
setup`` as root installs it). Without it a browser test is skipped, or
fails under ``CI=true``, as :func:`tests.helpers.deploy.prometheus_tool`
does for Prometheus.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless and offline, for one test module.

    Overrides pytest-playwright's session-wide browser: Playwright's sync API
    keeps an event loop running in the test thread while it is started, and
    every pytest-asyncio test after it would fail ("cannot be called from a
    running event loop"). Started and stopped per module, it is gone before
    the other modules' tests run.
    """
    executable = _chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page of its own context (no cookies or storage shared between tests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def artifacts() -> Path:
    """The folder for screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
