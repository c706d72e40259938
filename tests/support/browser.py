"""A real headless Chromium for tests: Debian's /usr/bin/chromium driven by playwright.

Playwright's own browser downloads are never used (this machine reaches no browser builds):
the Debian package, installed by scripts/system-deps.sh, is launched by path with a fresh
profile directory. Screenshots go to $PYTEST_ARTIFACTS (default tests/artifacts/), which git
ignores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir(name: str) -> Path:
    base = Path(os.environ.get("PYTEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium_page(profile_dir: Path, width: int = 1400, height: int = 1000) -> Iterator:
    """A page of a fresh headless Chromium (a new profile in `profile_dir`), closed after."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(f"{CHROMIUM} is missing: run scripts/system-deps.sh (Debian chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=list(FLAGS),
            viewport={"width": width, "height": height},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
