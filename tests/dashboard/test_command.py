"""`callscope dashboard` as a person runs it: prints the URL, serves, stops cleanly on Ctrl+C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_dashboard_command_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callscope",
            "dashboard",
            "--data",
            str(tmp_path / "data"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        line = ""
        while time.monotonic() < deadline and "callscope dashboard on" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, "the command exited before serving"
        assert f"http://127.0.0.1:{port}" in line, line
        response = httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)
        assert response.status_code == 200 and response.text == "ok"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_dashboard_command_refuses_a_file_as_data_dir(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "callscope",
            "dashboard",
            "--data",
            str(not_a_dir),
            "--port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "is not a directory" in result.stderr
