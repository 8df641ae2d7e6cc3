"""Durability: a 200 survives kill -9; readers in other processes query while ingest writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pipeline.samples import sample_request
from pipeline.storage import DataDir
from tests.ingest_process import ingest_process
from tests.pipeline.duckdb_shell import shell_query

PROTOBUF = {"content-type": "application/x-protobuf"}


def _count(data: Path, sql: str) -> int:
    with DataDir(data).connect_readonly() as con:
        row = con.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_acknowledged_spans_survive_kill_9_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acknowledged = 0
    # A long WAL age: nothing is rolled into segments before the kill, all must come from the log.
    with (
        ingest_process(data, "--roll-processes", "0", "--wal-seconds", "60") as (process, url),
        httpx.Client(timeout=30) as client,
    ):
        for seed in range(8):
            response = client.post(
                url, content=sample_request(100, seed=seed).SerializeToString(), headers=PROTOBUF
            )
            assert response.status_code == 200
            acknowledged += 100
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert list((data / "wal").glob("wal-*.log")), "the kill should leave a write-ahead log to replay"
    # Restart: the log is replayed into segments before serving, then the new run shuts down cleanly.
    with ingest_process(data) as (process, _url):
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert not list((data / "wal").glob("wal-*.log"))
    assert _count(data, "select count(*) from spans_raw") == acknowledged
    assert _count(data, "select count(distinct (trace_id, span_id)) from spans_raw") == acknowledged
    assert _count(data, "select count(distinct call_id) from spans") == 8 * 20


def test_replay_twice_does_not_duplicate(tmp_path: Path) -> None:
    # A crash after the segments were written but before the log was deleted: replaying rewrites
    # the same segment names, it does not add rows.
    from pipeline.rollup import roll_wal_file
    from pipeline.wal import HEADER, wal_files

    data = DataDir(tmp_path)
    data.ensure()
    data.wal_dir.mkdir()
    payload = sample_request(20).SerializeToString()
    import zlib

    log = data.wal_dir / "wal-00000000000000000001-abcd0123.log"
    log.write_bytes(HEADER.pack(len(payload), zlib.crc32(payload), 5) + payload + b"\x07\x00torn")
    copy = log.read_bytes()
    first = roll_wal_file(str(data.path), str(log))
    log.write_bytes(copy)  # as if the unlink had not happened
    second = roll_wal_file(str(data.path), str(log))
    assert first.spans == second.spans == 20
    assert first.segments == second.segments
    assert not wal_files(data.wal_dir)
    assert _count(tmp_path, "select count(*) from spans_raw") == 20


READER = """
import sys, time, duckdb
path, seconds = sys.argv[1], float(sys.argv[2])
counts, deadline = [], time.monotonic() + seconds
while time.monotonic() < deadline:
    con = duckdb.connect(path, read_only=True)
    counts.append(con.execute("select count(*) from spans").fetchone()[0])
    con.close()
print(len(counts), min(counts), max(counts), int(counts == sorted(counts)))
"""


def test_readers_in_other_processes_query_while_ingest_writes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with ingest_process(data, "--roll-processes", "0") as (process, url), httpx.Client(timeout=30) as client:
        # The views database exists as soon as ingest runs.
        deadline = time.monotonic() + 10
        while not (data / "callscope.duckdb").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, "../data/callscope.duckdb", "4"],
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < 3:
            body = sample_request(50, seed=1000 + sent).SerializeToString()
            assert client.post(url, content=body, headers=PROTOBUF).status_code == 200
            sent += 50
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        process.send_signal(signal.SIGTERM)  # a clean stop rolls the rest of the log
        assert process.wait(timeout=60) == 0
    queries, low, high, monotonic = (int(v) for v in out.split())
    assert queries > 5
    assert 0 <= low <= high <= sent
    assert monotonic == 1  # counts never go backwards while segments are added
    assert _count(data, "select count(*) from spans") == sent


def test_the_duckdb_shell_counts_spans_while_ingest_writes(tmp_path: Path) -> None:
    # The issue's own command, run as a user would, from another working directory:
    # `duckdb -readonly DIR/callscope.duckdb -c "select count(*) from spans"`.
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    database = "../data/callscope.duckdb"
    with ingest_process(data, "--roll-processes", "0") as (process, url), httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 10
        while not (data / "callscope.duckdb").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        sent, counts = 0, []
        started = time.monotonic()
        while time.monotonic() - started < 3:
            body = sample_request(50, seed=2000 + sent).SerializeToString()
            assert client.post(url, content=body, headers=PROTOBUF).status_code == 200
            sent += 50
            counts.append(int(shell_query(database, "select count(*) from spans", cwd=elsewhere)))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert len(counts) > 5
    assert counts == sorted(counts) and counts[-1] <= sent
    final = shell_query(database, "select count(*), count(distinct span_id) from spans", cwd=elsewhere)
    assert final == f"{sent},{sent}"
