"""Headless Chromium (Debian's chromium and chromium-driver) driven by selenium, for the status page.

A fresh profile folder per browser, no network beyond what the page asks for (no sync, no component
updates, no QUIC), and the browser's console log kept so a test can assert that nothing went wrong
in the page. Selenium is pointed at Debian's chromedriver, so it never tries to download one.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def available() -> str | None:
    """Why a browser test cannot run here, or None."""
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        return f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium and chromium-driver; make install)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A selenium WebDriver for headless Chromium; quit and its profile removed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="hs-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(15)
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_problems(driver: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    """Console messages at warning level or worse since the last call, minus the allowed substrings."""
    entries = driver.get_log("browser")
    return [
        f"{e.get('level')}: {e.get('message')}"
        for e in entries
        if e.get("level") in ("SEVERE", "WARNING") and not any(a in str(e.get("message")) for a in allowed)
    ]


def screenshot(driver: Any, path: Path, width: int) -> Path:
    """A PNG of the whole page laid out `width` CSS pixels wide, checked non-empty and decodable."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    driver.execute_cdp_cmd("Emulation.setScrollbarsHidden", {"hidden": True})
    try:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        clip = {"x": 0, "y": 0, "width": width, "height": max(300, height), "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
    finally:
        driver.execute_cdp_cmd("Emulation.setScrollbarsHidden", {"hidden": False})
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(shot["data"]))
    if path.stat().st_size < 2000:
        raise AssertionError(f"screenshot {path} is only {path.stat().st_size} bytes")
    return path
