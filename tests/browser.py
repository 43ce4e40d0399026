"""Open a page in Debian's headless Chromium through Playwright and record what a reader
would meet: console errors, dialogs, a value computed in the page, a screenshot.

Playwright drives Chromium over a pipe, so current Chromium's refusal of DevTools
websockets without --remote-allow-origins does not apply. It launches the system's
Chromium (`make browser`): no browser can be downloaded here or in CI, so never
`playwright install`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    # Without these Chromium calls home at start and the closed network refuses it,
    # which shows up as errors that are not the page's.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen


@dataclass
class PageResult:
    console_errors: list[str] = field(default_factory=list)  # console.error, exceptions, 404s
    dialogs: list[str] = field(default_factory=list)  # alert() etc. that opened
    value: object = None  # the expression evaluated after load
    screenshot: bytes = field(default=b"", repr=False)  # PNG of the viewport


@contextmanager
def chromium(executable: Path = CHROMIUM) -> Iterator[Browser]:
    """One headless Chromium for several pages; a missing one says how to get it."""
    if not os.access(executable, os.X_OK):
        raise FileNotFoundError(
            f"no Chromium at {executable}: run `make browser` (installs Debian's chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def visit(browser: Browser, url: str, expression: str, settle_ms: int = 1000) -> PageResult:
    """Load `url` in a fresh page, wait `settle_ms` (plotly draws after load), evaluate
    `expression`, take a screenshot. Dialogs are recorded and dismissed so the page goes on.
    """
    result = PageResult()
    page = browser.new_page(viewport=VIEWPORT)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            result.console_errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda err: result.console_errors.append(str(err)))
    page.on("dialog", lambda dialog: (result.dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(url, wait_until="load")
        page.wait_for_timeout(settle_ms)
        result.value = page.evaluate(expression)
        result.screenshot = page.screenshot()
    finally:
        page.close()
    return result
