"""Headless Chromium for tests: Debian's ``/usr/bin/chromium`` driven by Playwright (from PyPI).

Playwright's own browser download does not work offline: never run ``playwright install``;
the system Chromium is launched through ``executable_path``. Use::

    with chromium_page(tmp_path) as page:
        page.goto(path.as_uri())

Where Chromium or Playwright is missing, the test is skipped locally and FAILS in CI
(``CI=true``), like the Label Studio integration tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("PSEUDOLABEL_CHROMIUM", "/usr/bin/chromium"))
# No sandbox (tests may run as root in a container), no GPU, and nothing that phones home:
# QUIC, background networking, component updates and sync are all off.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _missing(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs headless Chromium for browser tests: {why}")
    pytest.skip(why)


@contextmanager
def chromium_page(tmp_path: Path, *, width: int = 1280, height: int = 900, timeout_ms: float = 30_000) -> Iterator[Any]:
    """A fresh Playwright page in headless Chromium with its own profile under ``tmp_path``
    (``chromium-profile/``); the browser is closed on exit. ``width`` / ``height``: viewport in
    CSS pixels; ``timeout_ms``: default timeout of every page action."""
    if not CHROMIUM.exists() and shutil.which(str(CHROMIUM)) is None:
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PSEUDOLABEL_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install playwright; do not run `playwright install`)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # Playwright refuses --user-data-dir in args: a persistent context is how it takes one.
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=list(FLAGS),
            viewport={"width": width, "height": height},
        )
        try:
            ctx.set_default_timeout(timeout_ms)
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            yield page
        finally:
            ctx.close()
