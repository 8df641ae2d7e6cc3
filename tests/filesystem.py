"""A small filesystem a test can fill up: a tmpfs mounted for the test (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "16m") at `path` for the block; skip the test where a tmpfs
    cannot be mounted (not root, or no permission), saying why."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("filling a filesystem needs a tmpfs, and mounting one needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until the filesystem is full, down to the last byte; returns it."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as sink:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    sink.write(b"\0" * size)
    return filler
