"""Open a local page in Debian's headless Chromium (scripts/setup.sh installs it) through
playwright, driving /usr/bin/chromium: playwright's own browser downloads are not used.

`render(path)` returns what a test asserts on: console errors and uncaught exceptions, every
request that was not for a local file, a full-page screenshot, and the value of a JavaScript
expression evaluated once the page's charts are drawn.
"""
from __future__ import annotations

import io
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# playwright adds --headless itself (headless=True) and a fresh --user-data-dir (the profile below).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Rendered:
    errors: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    value: Any = None

    def distinct_colours(self) -> int:
        """How many colours the screenshot has (a blank page has one)."""
        from PIL import Image

        image = Image.open(io.BytesIO(self.screenshot)).convert("RGB")
        return len(image.getcolors(maxcolors=image.width * image.height) or [])


def render(path: Path, *, ready: str, evaluate: str, width: int = 1280, timeout_ms: int = 120_000) -> Rendered:
    """Load `path` from disk, wait until the JavaScript condition `ready` holds, evaluate `evaluate`."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium for this test")
    from playwright.sync_api import sync_playwright

    out = Rendered()
    with tempfile.TemporaryDirectory(prefix="saje-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": width, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda message: out.errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: out.errors.append(str(error)))
            page.on("request", lambda request: None if request.url.startswith(("file:", "data:", "blob:"))
                    else out.remote_requests.append(request.url))
            page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
            page.wait_for_function(ready, timeout=timeout_ms)
            out.value = page.evaluate(evaluate)
            out.screenshot = page.screenshot(full_page=True, timeout=timeout_ms)
        finally:
            context.close()
    return out
