"""The dashboard in a real browser: `streamlit run` on a free port, Debian's headless Chromium.

The screenshots are kept under tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.server import dashboard_url, launch, wait_until_ready
from tests.dashboard.chromium import Chromium, chromium_path
from tests.dashboard.fixtures import DemoData, demo_data

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EXCEPTION_BOX = '[data-testid="stException"]'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        chromium_path() is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DemoData]]:
    demo = demo_data(tmp_path_factory)
    port = _free_port()
    environ = {**os.environ, "CALLSCOPE_JAEGER_URL": "http://jaeger.example:16686"}
    process = launch(demo.data_dir, port, environ=environ)
    try:
        url = dashboard_url(port)
        wait_until_ready(process, url, timeout=60)
        yield url, demo
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    binary = chromium_path()
    assert binary is not None
    with Chromium(binary) as chromium:
        yield chromium


def test_overview_renders_in_chromium(served: tuple[str, DemoData], browser: Chromium) -> None:
    url, demo = served
    browser.open(url + "/")
    text = browser.wait_for_text("Failure rate", "final calls failed", "Where calls stop")
    browser.screenshot(ARTIFACTS / "dashboard-overview.png")
    assert browser.count(EXCEPTION_BOX) == 0, text
    assert "Calls" in text and "In progress" in text
    assert str(len(demo.rows)) in text
    assert "Top applications by failures" in text
    # The charts drew (Vega renders into canvas or svg).
    assert browser.count('[data-testid="stVegaLiteChart"]') >= 2


def test_call_detail_deep_link_renders_in_chromium(served: tuple[str, DemoData], browser: Chromium) -> None:
    url, demo = served
    call_id = demo.call("invalid_scheme")
    browser.open(f"{url}/call?call_id={call_id}")
    text = browser.wait_for_text("invalid_action", "Next step", "answer_url response", "Raw spans")
    browser.screenshot(ARTIFACTS / "dashboard-call-detail.png")
    assert browser.count(EXCEPTION_BOX) == 0, text
    assert "Page not found" not in text  # a shared link opens the page it names, first time
    assert "requires wss" in text
    assert browser.evaluate("location.search") == f"?call_id={call_id}"


def test_calls_page_renders_in_chromium(served: tuple[str, DemoData], browser: Chromium) -> None:
    url, demo = served
    browser.open(url + "/calls")
    text = browser.wait_for_text("calls match", "Click a call id to open it")
    browser.screenshot(ARTIFACTS / "dashboard-calls.png")
    assert browser.count(EXCEPTION_BOX) == 0, text
    assert f"{len(demo.rows)} calls match" in text
    # The table is Streamlit's canvas data grid: its cells are not DOM text, the grid itself is.
    assert browser.count('[data-testid="stDataFrame"]') == 1
