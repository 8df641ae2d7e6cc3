"""Ingest throughput: concurrent OTLP protobuf clients into a live `callscope ingest`.

In the same run:
- the ceiling: decode-only rate (protobuf parse + row conversion of 512-span batches, no HTTP, no disk)
  with the decoder ingest uses (`decode_protobuf`: the C extension when built), and with the
  pure-Python path (`request_to_table`, the decoder before the C extension) for comparison;
- end to end with fsync on, and with --no-fsync (the durability cost);
each the median of --repeats runs. End to end = spans acknowledged / (time from the first request
until ingest has exited cleanly, i.e. every acknowledged span is in a Parquet segment).

Usage: .venv/bin/python bench/ingest.py [--clients 4] [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

# bench/pipeline.py would shadow the `pipeline` package when this file runs as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from pipeline.otlp import _otlp_fast, decode_protobuf, parse_protobuf, request_to_table  # noqa: E402
from pipeline.samples import sample_request  # noqa: E402
from pipeline.storage import DataDir  # noqa: E402

BATCH = 512


def decode_rate(bodies: list[bytes], seconds: float, python: bool = False) -> float:
    """Spans/s of parse + row conversion, single thread (`python`: the pure-Python path)."""
    spans = 0
    started = time.perf_counter()
    index = 0
    while time.perf_counter() - started < seconds:
        body = bodies[index % len(bodies)]
        batch = request_to_table(parse_protobuf(body), 1) if python else decode_protobuf(body, 1)
        spans += batch.accepted
        index += 1
    return spans / (time.perf_counter() - started)


def end_to_end(bodies: list[bytes], clients: int, seconds: float, fsync: bool) -> tuple[float, float, int]:
    """(end-to-end spans/s, acknowledgement spans/s, spans stored) for one ingest run."""
    with tempfile.TemporaryDirectory(prefix="callscope-bench-") as tmp:
        data = Path(tmp) / "data"
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
                "--fsync" if fsync else "--no-fsync",
            ],
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        line = process.stderr.readline().decode()
        url = line.split()[2]
        acked = [0] * clients
        refused = [0] * clients
        stop = threading.Event()

        def client(number: int) -> None:
            with httpx.Client(timeout=60) as session:
                index = number
                while not stop.is_set():
                    response = session.post(
                        url,
                        content=bodies[index % len(bodies)],
                        headers={"content-type": "application/x-protobuf"},
                    )
                    if response.status_code == 200:
                        acked[number] += BATCH
                    else:
                        refused[number] += 1
                        time.sleep(float(response.headers.get("retry-after", "1")) / 10)
                    index += clients

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        acknowledged_at = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=600)
        process.stderr.close()
        finished = time.perf_counter()
        total = sum(acked)
        with DataDir(data).connect_readonly() as con:
            stored = con.execute("select count(*) from spans_raw").fetchone()[0]  # type: ignore[index]
        if sum(refused):
            print(f"  ({sum(refused)} requests refused with 429/503 and retried)")
        return total / (finished - started), total / (acknowledged_at - started), int(stored)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    bodies = [sample_request(BATCH, seed=seed).SerializeToString() for seed in range(64)]
    print(
        f"batches of {BATCH} spans, {len(bodies[0]) / BATCH:.0f} bytes/span on the wire, "
        f"{args.clients} clients, {args.seconds:g} s per run, median of {args.repeats}"
    )
    python = statistics.median(decode_rate(bodies, 3.0, python=True) for _ in range(args.repeats))
    decode = statistics.median(decode_rate(bodies, 3.0) for _ in range(args.repeats))
    decoder = "C extension" if _otlp_fast is not None else "Python: the C extension is NOT built"
    print(f"decode only, Python path:  {python:>10,.0f} spans/s")
    print(f"decode only (ceiling):     {decode:>10,.0f} spans/s  ({decoder}; {decode / python:.1f}x Python)")
    results = {}
    for fsync in (True, False):
        runs = [end_to_end(bodies, args.clients, args.seconds, fsync) for _ in range(args.repeats)]
        for _e2e, _ack, stored in runs:
            assert stored > 0
        e2e = statistics.median(r[0] for r in runs)
        ack = statistics.median(r[1] for r in runs)
        results[fsync] = e2e
        label = "fsync" if fsync else "no fsync"
        print(
            f"end to end ({label:>8}):    {e2e:>10,.0f} spans/s  (acknowledged at {ack:,.0f} spans/s; "
            f"{e2e / decode:.2f}x decode-only)"
        )
    print(f"durability cost (fsync on vs off): {results[True] / results[False]:.2f}x")
    print(
        f"target: >= 100,000 spans/s end to end: {results[True] / 100_000:.2f}x of target; "
        f">= 0.5x decode-only: {results[True] / decode:.2f}x"
    )


if __name__ == "__main__":
    main()
