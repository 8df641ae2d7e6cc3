"""Ingest under faults found by the soak (bench/soak.py): a failed roll-up, a full disk, kill -9.

- A WAL file whose roll-up failed used to wait for the next ingest start: its acknowledged spans
  stayed invisible for as long as ingest kept running. It is now tried again every few seconds.
- A full disk: the WAL append fails, ingest answers 503 (retryable for OTLP clients), and accepts
  again once there is space; everything acknowledged is stored. Needs a tmpfs (root); skipped
  where mounting is not allowed.
- kill -9 of `callscope ingest --roll-processes 1` used to leave its decode worker (and
  multiprocessing's resource tracker) running forever, one pair per kill.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import psutil
from google.rpc import status_pb2

from pipeline.ingest import running_ingest
from pipeline.samples import sample_request
from pipeline.storage import DataDir
from tests.filesystem import fill, small_filesystem
from tests.ingest_process import ingest_process

PROTOBUF = {"content-type": "application/x-protobuf"}


def _stored(data: Path) -> int:
    with DataDir(data).connect_readonly() as con:
        row = con.execute("select count(*) from spans").fetchone()
    assert row is not None
    return int(row[0])


def _wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_a_failed_roll_up_is_retried_without_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with (
        running_ingest(data, fsync=False, wal_file_age_s=0.2, roll_retry_s=0.5) as ingest,
        httpx.Client(timeout=10) as client,
    ):
        # Break the segment directory: a file where spans/ should be (writing segments fails).
        shutil.rmtree(data / "spans")
        (data / "spans").write_text("not a directory")
        response = client.post(
            ingest.traces_url, content=sample_request(30).SerializeToString(), headers=PROTOBUF
        )
        assert response.status_code == 200  # acknowledged: it is in the write-ahead log
        assert _wait_for(lambda: client.get(ingest.url + "/healthz").json()["wal_files_waiting_retry"] == 1)
        health = client.get(ingest.url + "/healthz").json()
        assert health["roll_failures"] >= 1
        (data / "spans").unlink()
        (data / "spans").mkdir()
        # Repaired: the next attempt rolls the file while ingest keeps running.
        assert _wait_for(lambda: client.get(ingest.url + "/healthz").json()["wal_files_waiting_retry"] == 0)
        assert _stored(data) == 30
        assert not list((data / "wal").glob("wal-*.log"))


def test_a_full_disk_answers_503_and_recovers(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", "16m") as fs:
        data = fs / "data"
        acknowledged = 0
        with (
            running_ingest(data, fsync=False, wal_file_age_s=0.2, roll_retry_s=0.5) as ingest,
            httpx.Client(timeout=10) as client,
        ):

            def post(seed: int) -> httpx.Response:
                body = sample_request(20, seed=seed).SerializeToString()
                return client.post(ingest.traces_url, content=body, headers=PROTOBUF)

            assert post(1).status_code == 200
            acknowledged += 20
            filler = fill(fs)
            refused = post(2)
            assert refused.status_code == 503
            assert "No space left on device" in status_pb2.Status.FromString(refused.content).message
            assert client.get(ingest.url + "/healthz").status_code == 200  # still up
            filler.unlink()
            assert _wait_for(lambda: post(3).status_code == 200)
            acknowledged += 20
            assert _wait_for(lambda: _stored(data) == acknowledged)
        assert _stored(data) == acknowledged


def test_kill_9_of_ingest_leaves_no_worker_process(tmp_path: Path) -> None:
    with ingest_process(tmp_path / "data", "--roll-processes", "1", "--wal-seconds", "0.2") as (process, url):
        body = sample_request(10).SerializeToString()
        assert httpx.post(url, content=body, headers=PROTOBUF, timeout=30).status_code == 200
        parent = psutil.Process(process.pid)
        # The decode worker starts with the first roll-up.
        assert _wait_for(lambda: len(parent.children(recursive=True)) >= 1)
        children = parent.children(recursive=True)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        _gone, alive = psutil.wait_procs(children, timeout=15)
        for leftover in alive:
            leftover.kill()
        assert alive == [], f"left running after kill -9: {[p.cmdline() for p in alive]}"
