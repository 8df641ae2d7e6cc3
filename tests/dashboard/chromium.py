"""Drive Debian's headless Chromium over the DevTools protocol (websockets), for the browser test.

Only what the test needs: open a URL, wait until the page's text holds what we expect and
Streamlit has stopped running, read the DOM, and take a screenshot. No downloaded browser, no
driver binary: Chromium's own remote-debugging endpoint on a free loopback port.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1800",
)


def chromium_path() -> str | None:
    """The Chromium binary, or None when it is not installed."""
    for path in CHROMIUM_PATHS:
        if Path(path).exists():
            return path
    return shutil.which("chromium")


class Chromium:
    """A headless Chromium with one page, driven over DevTools. Use as a context manager."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        self._binary = binary
        self._timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="callscope-chromium-", ignore_cleanup_errors=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._ids = itertools.count(1)

    def __enter__(self) -> Chromium:
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _start(self) -> Chromium:
        self._process = subprocess.Popen(
            [self._binary, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port = self._devtools_port()
        deadline = time.monotonic() + self._timeout
        with httpx.Client(timeout=5) as client:
            while True:
                targets = client.get(f"http://127.0.0.1:{port}/json/list").json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        if not pages:
            raise RuntimeError("chromium opened no page")
        self._ws = self._stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10)
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._profile.cleanup()

    def _devtools_port(self) -> int:
        # With --remote-debugging-port=0 Chromium writes the port it chose to this file.
        active = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._process.returncode}")
            if active.exists():
                first = active.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events in between are skipped)."""
        assert self._ws is not None
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=self._timeout))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        """Navigate the page to `url`."""
        self.send("Page.navigate", url=url)

    def wait_for_text(self, *texts: str, timeout: float = 60.0) -> str:
        """Wait until the page's text holds every one of `texts` and Streamlit is idle; return the text.

        Streamlit shows a "Running..." status widget while a script runs; the page is settled when
        the expected text is there and that widget is gone for a moment.
        """
        deadline = time.monotonic() + timeout
        settled_since: float | None = None
        body = ""
        while time.monotonic() < deadline:
            body = self.evaluate("document.body ? document.body.innerText : ''") or ""
            running = self.evaluate(
                "!!document.querySelector('[data-testid=\"stStatusWidget\"]') && "
                "/Running/i.test(document.querySelector('[data-testid=\"stStatusWidget\"]').innerText)"
            )
            if all(t in body for t in texts) and not running:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since >= 1.0:
                    return body
            else:
                settled_since = None
            time.sleep(0.2)
        missing = [t for t in texts if t not in body]
        raise TimeoutError(f"page never showed {missing!r}; it shows: {body[:1500]!r}")

    def count(self, selector: str) -> int:
        """How many elements match a CSS selector."""
        return int(self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length") or 0)

    def dom(self) -> str:
        """The page's current DOM as HTML."""
        return str(self.evaluate("document.documentElement.outerHTML") or "")

    def screenshot(self, path: Path) -> Path:
        """Save a full-page PNG screenshot to `path`.

        The viewport is resized to the page's height first: `captureBeyondViewport` paints fixed
        elements mid-layout (Streamlit's sidebar came out shifted off the left edge)."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
        viewport = metrics.get("cssLayoutViewport") or metrics.get("layoutViewport") or {}
        params: dict[str, Any] = {"format": "png"}
        height = int(size.get("height", 0))
        resized = height > int(viewport.get("clientHeight", 0))
        if resized:
            self.send(
                "Emulation.setDeviceMetricsOverride",
                width=int(viewport.get("clientWidth", 1400)),
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            time.sleep(0.5)  # let the page lay itself out at the new size
        data = self.send("Page.captureScreenshot", **params)["data"]
        if resized:
            self.send("Emulation.clearDeviceMetricsOverride")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
