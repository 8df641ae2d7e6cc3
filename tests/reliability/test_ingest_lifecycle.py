"""Ingest started in-process on a busy port fails cleanly: nothing of it keeps running."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from pipeline.ingest import running_ingest


def _ingest_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("callscope-")}


def test_a_busy_port_leaves_no_ingest_threads_behind(tmp_path: Path) -> None:
    before = _ingest_threads()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError), running_ingest(tmp_path / "data", port=port, fsync=False):
            pytest.fail("ingest must not start on a port that is in use")
    # Before the fix, the write-ahead-log writer and the roll-up worker were started before the
    # bind and never stopped: a daemon thread per failed start, holding the data directory.
    assert _ingest_threads() == before
    # And the same directory is usable right away by a new ingest.
    with running_ingest(tmp_path / "data", fsync=False) as ingest:
        assert ingest.port != port
    assert _ingest_threads() == before
