"""Fixtures of the browser tests of the web console (issue #16): Playwright for Python driving Debian's Chromium
(``apt-get install chromium``; Playwright's own browser downloads are not used) against the real stack of
tests/conftest.py.

Without Chromium or without the ``playwright`` package every test here is skipped at collection, with the reason
in pytest's skip summary (``-rs`` in pyproject's addopts), so ``make test`` says why. ``GATEHOUSE_CHROMIUM`` names
another Chromium executable.

Each test gets a fresh browser context (no cookies) on the stack's base URL; at its end the page is saved as
``test-artifacts/screenshots/<test name>.png`` (gitignored), and tests may save more pages with :func:`screenshot`.
Console errors and uncaught page errors are collected in :class:`BrowserLog`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Stack
    from playwright.sync_api import Browser, ConsoleMessage, Page

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "chromium-browser")
TIMEOUT_MS = 15_000  # for actions and expect() (Playwright's defaults: 30 s, 5 s); a busy 2-core box


def chromium_executable() -> str | None:
    """``GATEHOUSE_CHROMIUM`` if set, else Debian's Chromium (``/usr/bin/chromium``) or one on PATH."""
    wanted = os.environ.get("GATEHOUSE_CHROMIUM")
    for name in (wanted,) if wanted else CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser tests need the playwright package: .venv/bin/pip install -e '.[dev]' (make install-dev)"
    if chromium_executable() is None:
        where = os.environ.get("GATEHOUSE_CHROMIUM") or "/usr/bin/chromium"
        return f"browser tests need Chromium ({where} not found): apt-get install chromium"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(skip)


@dataclass
class BrowserLog:
    """What the page said: console errors, uncaught exceptions, and the URLs it requested."""

    errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e or "Content-Security-Policy" in e]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped on purpose: Playwright's sync API keeps its own event loop set as the running loop until
    it stops, and every asyncio test after it (asyncio.run, pytest-asyncio) would fail while it lives."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    executable = chromium_executable()
    assert executable is not None  # collection skipped the tests otherwise
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root, and Chromium refuses its sandbox then
        b = p.chromium.launch(executable_path=executable, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def browser_log() -> BrowserLog:
    return BrowserLog()


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:150] or "page"


def screenshot(page: Page, name: str) -> Path:
    """Save the page as ``test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{_file_name(name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def page(browser: Browser, stack: Stack, browser_log: BrowserLog, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh context on the stack's base URL; saved as a screenshot when the test ends."""
    context = browser.new_context(base_url=stack.base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    # a violation is also said as a console error, whatever words this Chromium uses for it
    context.add_init_script("document.addEventListener('securitypolicyviolation', e => console.error("
                            "'Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI));")
    pg = context.new_page()
    pg.on("console", browser_log.on_console)
    pg.on("pageerror", lambda exc: browser_log.page_errors.append(str(exc)))
    pg.on("request", lambda req: browser_log.requests.append(req.url))
    pg.on("dialog", lambda dialog: dialog.accept())  # a "Revoke this key?" confirm() is answered yes
    try:
        yield pg
    finally:
        try:
            screenshot(pg, request.node.name)
        except Exception as e:  # a crashed page: the test's own failure says more
            print(f"no screenshot of {request.node.name}: {e}")
        context.close()


def signed_in(page: Page, key: str) -> Page:
    """Sign in at /ui/login with ``key`` (the master key, a virtual key or a JWT); on the playground after."""
    page.goto("/ui/login")
    page.fill("input#key", key)
    page.click("button#sign-in")
    page.wait_for_url("**/ui/playground")
    return page
