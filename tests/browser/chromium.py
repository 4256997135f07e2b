"""Debian's headless Chromium (`apt-get install chromium`) driven by Playwright, as the browser
tests launch it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.conftest import require_tool

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator:
    """A Playwright browser on the system's Chromium (the test is skipped without one)."""
    exe = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
