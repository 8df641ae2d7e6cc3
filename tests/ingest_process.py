"""`callscope ingest` as a real subprocess, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def ingest_process(data: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`callscope ingest --port 0` as a subprocess; yields it and its traces URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callscope",
            "ingest",
            "--port",
            "0",
            "--data",
            str(data),
            "--log-level",
            "warning",
            "--compact-interval",
            "0",
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert process.stderr is not None
        lines = []
        while not lines or "callscope ingest: http://" not in lines[-1]:
            line = process.stderr.readline().decode()
            assert line, "ingest exited: " + "".join(lines)
            lines.append(line)
        line = lines[-1]
        url = line.split()[2]
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
