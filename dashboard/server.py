"""Run the dashboard as a `streamlit run` subprocess (for `callscope dashboard` and `callscope demo`).

Importing this module does not import Streamlit: the demo can launch the dashboard cheaply.
The data directory reaches the app through CALLSCOPE_DATA, like every other callscope process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

APP_PATH = Path(__file__).resolve().with_name("app.py")
"""The Streamlit entry script (a multipage app)."""

DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "127.0.0.1"


class DashboardStartError(RuntimeError):
    """The dashboard process exited or did not answer its health check in time."""


def streamlit_command(port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS) -> list[str]:
    """The `streamlit run` command line: headless, no telemetry, no file watcher, no dev toolbar."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.headless=true",
        f"--server.port={port}",
        f"--server.address={address}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=viewer",
    ]


def dashboard_url(port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS) -> str:
    """The URL people open (0.0.0.0 means every interface: show localhost)."""
    host = "localhost" if address in ("0.0.0.0", "::", "") else address
    return f"http://{host}:{port}"


def launch(
    data_dir: Path | str,
    port: int = DEFAULT_PORT,
    *,
    address: str = DEFAULT_ADDRESS,
    environ: Mapping[str, str] | None = None,
    quiet: bool = True,
) -> subprocess.Popen[bytes]:
    """Start the dashboard on `data_dir` in a subprocess and return it (not waiting for readiness).

    The caller owns the process: `terminate()` then `wait()` it. With `quiet`, Streamlit's own
    output is discarded; otherwise it goes to this process's stdout/stderr.
    Use `wait_until_ready` to block until it answers.
    """
    env = dict(os.environ if environ is None else environ)
    env["CALLSCOPE_DATA"] = str(Path(data_dir).resolve())
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        streamlit_command(port, address),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        cwd=str(APP_PATH.parent),
    )


def wait_until_ready(
    process: subprocess.Popen[bytes], url: str, timeout: float = 30.0, interval: float = 0.2
) -> None:
    """Block until Streamlit's health endpoint answers "ok"; raise DashboardStartError otherwise."""
    import httpx

    deadline = time.monotonic() + timeout
    health = url.rstrip("/") + "/_stcore/health"
    last_error = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DashboardStartError(f"the dashboard exited with status {process.returncode}")
            try:
                response = client.get(health)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last_error = str(exc) or type(exc).__name__
            time.sleep(interval)
    raise DashboardStartError(
        f"the dashboard at {url} did not become ready in {timeout:.0f} s ({last_error})"
    )
