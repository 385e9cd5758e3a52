"""The page of `sdcpu serve` in a real browser: headless Chromium (Debian's `chromium` package) driven
by Playwright over loopback. It types a prompt, generates on the demo model, sees the progress and the
preview, gets the image, reuses settings from the gallery, and fits a phone-width screen.

`SDCPU_SCREENSHOT=docs/serve.png` keeps the screenshot there (docs/serve.md shows it). CI sets
`SDCPU_REQUIRE_BROWSER=1`, so that a missing browser fails the run instead of skipping the test.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow
# Every change of the status line and of the preview's source, as the page makes them.
WATCH = """() => {
  window.statuses = []; window.previews = 0;
  new MutationObserver(() => window.statuses.push(document.getElementById('status').textContent))
    .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
  new MutationObserver(() => window.previews++)
    .observe(document.getElementById('output'), {attributes: true, attributeFilter: ['src'], subtree: true});
}"""


def _until(page, predicate: str, timeout: float = 120) -> None:
    # Polled with evaluate, which the page's Content-Security-Policy allows (wait_for_function needs eval).
    deadline = time.time() + timeout
    while not page.evaluate(predicate):
        assert time.time() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def url(live_server):
    if CHROMIUM is None:
        if os.environ.get("SDCPU_REQUIRE_BROWSER") == "1":
            pytest.fail("no chromium on this machine: apt-get install chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return live_server


def test_the_page_generates_with_progress_and_a_gallery(url, tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(url)
        _until(page, "() => document.getElementById('scheduler').options.length > 1")
        page.evaluate(WATCH)
        page.fill("#prompt", "a red circle on the left, blue background")
        # The size stays the page's default, the model's native one (the demo's 64x64): the first image a
        # new user sees, and the one the README shows.
        assert page.input_value("#width") == "64" and page.input_value("#height") == "64"
        for field, value in (("#steps", "40"), ("#seed", "7")):
            page.fill(field, value)
        page.click("#generate")
        _until(
            page, "() => { const i = document.querySelector('#output img.result'); return i && i.naturalWidth > 0; }"
        )
        statuses = page.evaluate("window.statuses")
        assert any(re.fullmatch(r"step \d+ of 40", s) for s in statuses), statuses
        assert page.evaluate("window.previews") > 0 and statuses[-1] == "done: seed 7"
        page.wait_for_selector("#gallery figure")
        screenshot = Path(os.environ.get("SDCPU_SCREENSHOT") or tmp_path / "serve.png")
        page.screenshot(path=str(screenshot), full_page=True)
        page.fill("#prompt", "")
        page.click("#gallery figure")
        assert page.input_value("#prompt") == "a red circle on the left, blue background"
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        browser.close()
    assert errors == []
