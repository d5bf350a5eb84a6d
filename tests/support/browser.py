"""A real headless Chromium for the console's browser tests.

Debian's `chromium` and `chromium-driver` (installed by `scripts/setup.sh
test`), driven with Selenium through /usr/bin/chromedriver: nothing is
downloaded at test time (the driver path is given, so Selenium Manager is
never asked). The daemon under test runs on the test's event loop, so every
browser call goes through `asyncio.to_thread` (`AsyncBrowser`): a blocking
WebDriver call on the loop would stop the daemon the browser is talking to.

Screenshots land in SCREENSHOTS (tests/artifacts/console/, or
$MTA_SCREENSHOT_DIR), one PNG per page and width — the test run's
artifacts; README.md shows two of them (copied to docs/console/).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(os.environ.get("MTA_SCREENSHOT_DIR")
                   or Path(__file__).resolve().parents[1] / "artifacts" / "console")
_T = TypeVar("_T")


def missing() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (Debian's chromium and chromium-driver; " \
                   f"`scripts/setup.sh test` installs them as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (`scripts/setup.sh test`)"
    return None


def _driver(profile: str, width: int, height: int, javascript: bool) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The flags the machine notes give for a closed network: no background
    # connections, no component updates, no first-run, a fresh profile.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--disable-features=Translate,MediaRouter,OptimizationHints",
                "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


class AsyncBrowser:
    """Selenium calls run in a worker thread; the loop keeps serving."""

    def __init__(self, driver: Any):
        self.driver = driver

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By
        return await self.call(self.driver.find_element, By.CSS_SELECTOR, css)

    async def finds(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By
        return await self.call(self.driver.find_elements, By.CSS_SELECTOR, css)

    async def text(self, css: str) -> str:
        element = await self.find(css)
        return await self.call(lambda: element.text)

    async def click(self, css: str) -> None:
        element = await self.find(css)
        await self.call(element.click)

    async def type(self, css: str, text: str, clear: bool = True) -> None:
        element = await self.find(css)
        if clear:
            await self.call(element.clear)
        await self.call(element.send_keys, text)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    async def page_source(self) -> str:
        return await self.call(lambda: str(self.driver.page_source))

    async def wait(self, condition: Callable[[], Any], timeout: float = 15.0,
                   what: str = "condition") -> Any:
        """Poll `condition` (run in the worker thread) until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.call(condition)
            except Exception:            # a stale element mid-update: ask again
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            await asyncio.sleep(0.1)

    async def wait_text(self, css: str, text: str, timeout: float = 15.0) -> str:
        from selenium.webdriver.common.by import By

        def check() -> str | None:
            for element in self.driver.find_elements(By.CSS_SELECTOR, css):
                if text in element.text:
                    return str(element.text)
            return None
        return str(await self.wait(check, timeout, f"{text!r} in {css}"))

    async def overflow_at(self, width: int) -> int:
        """How many CSS pixels the page is wider than a `width`-px window
        (0: nothing makes the whole page scroll sideways)."""
        def measure() -> int:
            size = self.driver.get_window_size()
            self.driver.set_window_size(width, size["height"])
            try:
                return int(self.driver.execute_script(
                    "return document.documentElement.scrollWidth - window.innerWidth"))
            finally:
                self.driver.set_window_size(size["width"], size["height"])
        return await self.call(measure)

    async def shot(self, name: str, width: int | None = None) -> Path:
        """A PNG of the whole page as the browser shows it: SCREENSHOTS/name.png
        (at `width` px when given, the window's height grown to the page)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"

        def take() -> None:
            size = self.driver.get_window_size()
            w = width or size["width"]
            self.driver.set_window_size(w, size["height"])     # lay out at this width first
            height = self.driver.execute_script(
                "return Math.max(document.body.scrollHeight,"
                " document.documentElement.scrollHeight)")
            self.driver.set_window_size(w, max(400, min(int(height) + 120, 4000)))
            try:
                self.driver.save_screenshot(str(path))
            finally:
                self.driver.set_window_size(size["width"], size["height"])
        await self.call(take)
        return path


@contextlib.asynccontextmanager
async def browser(width: int = 1280, height: int = 900,
                  javascript: bool = True) -> AsyncIterator[AsyncBrowser]:
    profile = tempfile.mkdtemp(prefix="mta-chromium-")
    driver = await asyncio.to_thread(_driver, profile, width, height, javascript)
    try:
        driver.set_page_load_timeout(30)
        yield AsyncBrowser(driver)
    finally:
        await asyncio.to_thread(driver.quit)
        shutil.rmtree(profile, ignore_errors=True)
