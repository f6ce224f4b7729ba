"""What the browser journeys share: Chromium with a page that records script errors and 5xx answers, numbered
screenshots beside the logs, reloading until something shows, and the first steps of a new user (sign up,
upload a file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_journey import CHROMIUM, CHROMIUM_ARGS, PASSWORD


@dataclass
class Console:
    page: Any
    expect: Any
    prefix: str
    problems: list[str] = field(default_factory=list)
    _shots: Iterator[int] = field(default_factory=lambda: count(1))

    def shot(self, name: str) -> None:
        self.page.screenshot(
            path=str(ARTIFACTS / f"{self.prefix}-{next(self._shots):02d}-{name}.png"), full_page=True
        )

    def reload_until(self, check: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
        for _ in range(int(timeout_s)):
            if check():
                return
            self.page.wait_for_timeout(1000)
            self.page.reload()
        raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")

    def sign_up(self, base: str, *, email: str, org_name: str) -> None:
        self.page.goto(f"{base}/")
        self.page.click("text=Create an account")
        self.page.fill("#email", email)
        self.page.fill("#password", PASSWORD)
        self.page.fill("#org_name", org_name)
        self.page.click("button:has-text('Create account')")

    def upload(self, file: Path) -> None:
        """Upload a file as a new dataset; ends on its columns page."""
        self.page.click("a:has-text('Upload data')")
        self.page.click("text=Upload a file")
        self.page.set_input_files("#file", str(file))
        self.page.click("#upload-button")
        self.page.wait_for_url("**/columns")


@contextmanager
def console_browser(prefix: str) -> Iterator[Console]:
    """Chromium on a 1280x900 page; screenshots land in `test-artifacts/e2e/<prefix>-NN-*.png`. A script error
    or a 5xx answer seen on the way fails the journey at its end."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (/usr/bin/chromium); `make browser` installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        console = Console(page=page, expect=sync_api.expect, prefix=prefix)
        page.on("pageerror", lambda error: console.problems.append(f"script error on {page.url}: {error}"))
        page.on(
            "response", lambda r: console.problems.append(f"{r.status} {r.url}") if r.status >= 500 else None
        )
        yield console
        browser.close()
    assert console.problems == []
