"""Headless Debian Chromium through its ChromeDriver (Selenium), recording every request the page
makes from the DevTools performance log. Never downloads a browser or a driver."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

# The flags the project starts Chromium with: nothing in the background may reach the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_paths() -> tuple[str, str]:
    """(browser, driver) from PATH; a clear error when missing (scripts/bootstrap.sh --test)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise RuntimeError("chromium and chromedriver are needed: run scripts/bootstrap.sh --test")
    return browser, driver


@dataclass
class Browser:
    driver: webdriver.Chrome
    # Every DevTools Network event seen so far (the log is drained on each read).
    events: list[dict[str, Any]] = field(default_factory=list)

    def network(self) -> list[dict[str, Any]]:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"].startswith("Network."):
                self.events.append(message)
        return self.events

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.network()
            if e["method"] == "Network.requestWillBeSent"
        ]

    def responses(self) -> list[dict[str, Any]]:
        return [e["params"]["response"] for e in self.network() if e["method"] == "Network.responseReceived"]

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)


@contextmanager
def chromium(width: int = 1600, height: int = 1000, lang: str = "zh-CN") -> Iterator[Browser]:
    browser_path, driver_path = chromium_paths()
    profile = tempfile.mkdtemp(prefix="cityneuron-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        f"--lang={lang}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # Selenium Manager must not look for drivers or browsers online.
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
