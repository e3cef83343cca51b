"""The report of a real SmolLM2 scan, opened in headless Chromium: no console errors, every figure shown.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in, fd 4
out, NUL-separated JSON), so no port is opened and no client library is needed. The test collects
console calls, uncaught exceptions and log entries (failed loads are logged there), checks every
<img> decoded, takes a full-page screenshot and checks that each figure's area of it is not blank.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--remote-debugging-pipe",
)


class Browser:
    """A minimal DevTools-protocol client over Chromium's pipe."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._recv(deadline))

    def close(self) -> None:
        with contextlib.suppress(EOFError, TimeoutError, RuntimeError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def open_page(url: str, profile: Path, width: int = 1200) -> dict:
    """Load ``url``; return problems, the images' state and boxes, and a full-page screenshot."""
    browser = Browser(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})
        session = browser.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            browser.call(domain, session=session)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.call("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        script = """JSON.stringify([...document.images].map(i => {
            const r = i.getBoundingClientRect();
            return {src: i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                    x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height,
                    figure: i.closest('figure') ? i.closest('figure').id : null};
        }))"""
        images = json.loads(
            browser.call("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=session)["result"][
                "value"
            ]
        )
        shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        problems = [
            e
            for e in browser.events
            if e.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded")
        ]
        return {"images": images, "screenshot": base64.b64decode(shot["data"]), "problems": problems}
    finally:
        browser.close()


def decode_png(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def not_blank(pixels: np.ndarray) -> bool:
    """Real content: many distinct grey levels, a real spread, and not a single colour."""
    grey = pixels[..., :3].mean(axis=-1)
    return float(grey.std()) > 0.05 and len(np.unique(np.round(grey, 2))) > 20


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, smollm2_scan):
    from superweight.report.runs import write_run

    return write_run(tmp_path_factory.mktemp("browser") / "smollm2", "scan", smollm2_scan)


def test_open_page_sees_console_errors_and_broken_images(tmp_path):
    """The checker itself must be able to fail: a page with a console error and a missing image."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="missing.png"><script>console.error("boom")</script></body></html>')
    seen = open_page(page.as_uri(), tmp_path / "profile")
    kinds = {e["method"] for e in seen["problems"]}
    assert {"Runtime.consoleAPICalled", "Log.entryAdded"} <= kinds
    assert seen["images"][0]["w"] == 0


def test_report_opens_without_errors_and_shows_every_figure(report_dir, tmp_path):
    figures = sorted(p.stem for p in (report_dir / "figures").glob("*.png"))
    assert figures == ["scan_max_activations", "scan_residual", "scan_row_heatmap"]
    seen = open_page((report_dir / "report.html").as_uri(), tmp_path / "profile")
    assert seen["problems"] == []
    screenshot = decode_png(seen["screenshot"])
    (tmp_path / "report.png").write_bytes(seen["screenshot"])
    artifacts = os.environ.get("SUPERWEIGHT_ARTIFACTS")
    if artifacts:  # CI keeps the screenshot for people to look at
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / "report-smollm2-scan.png").write_bytes(seen["screenshot"])
    assert not_blank(screenshot)
    images = seen["images"]
    assert sorted(img["figure"] for img in images) == figures  # each figure once, in a <figure>
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")  # inline: the page needs nothing else
        assert img["complete"] and img["w"] > 300 and img["h"] > 150, img["figure"]
        embedded = decode_png(base64.b64decode(img["src"].split(",", 1)[1]))
        assert not_blank(embedded), img["figure"]
        # and it is really painted: the figure's area of the screenshot has the figure's content
        assert img["width"] > 300 and img["height"] > 100
        x, y = round(img["x"]), round(img["y"])
        area = screenshot[y : y + round(img["height"]), x : x + round(img["width"])]
        assert area.shape[0] > 100 and area.shape[1] > 300, img["figure"]
        assert not_blank(area), img["figure"]
