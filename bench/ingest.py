"""Ingest throughput: concurrent OTLP protobuf clients into a live `callscope ingest`.

In the same run:
- the ceiling: decode-only rate (protobuf parse + row conversion of 512-span batches, no HTTP, no
  disk) with the decoder ingest uses (`decode_protobuf`: the C extension when it is built), and
  with the pure-Python path (`request_to_table`, the decoder before the C extension) for comparison;
- end to end with fsync on, and with --no-fsync (the durability cost);
in --repeats interleaved rounds; figures are medians, ratios are medians of each round's ratio.
Then the roll-up's own work per span, CPU time on one thread (medians of 5): decoding WAL records
(one by one, `decode_protobuf(..., parsed_before=True)`, and a whole file at once,
`fast_records_to_table` per ~1 MiB, as the roll-up does) and writing the Parquet segment, with and without the
typed `minivoice` column, with the segment write settings (`pipeline.storage`) and with pyarrow's
defaults (dictionary and statistics on every column: the settings before), plus bytes per span.
End to end = spans acknowledged / (time from the first request until ingest has exited cleanly,
i.e. every acknowledged span is in a Parquet segment).

The clients are keep-alive `http.client` connections in threads of this process: the load
generator shares the machine with ingest, so it should be cheap (httpx costs ~2.5x more CPU per
request). CPU seconds per span of each process (clients, ingest's request path, its roll-up worker)
are printed too: unlike spans/s, they hardly depend on what else the machine is running.

Usage: .venv/bin/python bench/ingest.py [--clients 8] [--seconds 10] [--repeats 3] [--rollup-only]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# bench/pipeline.py would shadow the `pipeline` package when this file runs as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.otlp import (  # noqa: E402
    _otlp_fast,
    decode_protobuf,
    fast_records_to_table,
    parse_protobuf,
    request_to_table,
)
from pipeline.rollup import WALK_BYTES  # noqa: E402
from pipeline.samples import sample_request  # noqa: E402
from pipeline.schema import MINIVOICE_COLUMN  # noqa: E402
from pipeline.storage import (  # noqa: E402
    COMPRESSION,
    COMPRESSION_LEVEL,
    SEGMENT_DICTIONARY_COLUMNS,
    SEGMENT_STATISTICS_COLUMNS,
    DataDir,
)

BATCH = 512


#: CPU microseconds per span of each decode_rate call (spans/s move with the machine's load;
#: CPU time much less).
DECODE_CPU_US: dict[bool, list[float]] = {True: [], False: []}


def decode_rate(bodies: list[bytes], seconds: float, python: bool = False) -> float:
    """Spans/s of parse + row conversion, single thread (`python`: the pure-Python path)."""
    spans = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    index = 0
    while time.perf_counter() - started < seconds:
        body = bodies[index % len(bodies)]
        batch = request_to_table(parse_protobuf(body), 1) if python else decode_protobuf(body, 1)
        spans += batch.accepted
        index += 1
    DECODE_CPU_US[python].append((time.process_time() - cpu_started) * 1e6 / spans)
    return spans / (time.perf_counter() - started)


@dataclass(frozen=True)
class Run:
    """One end-to-end run."""

    end_to_end: float  # spans/s until every acknowledged span is in a segment
    acknowledged: float  # spans/s of 200s while the clients ran
    acked_spans: int
    stored: int  # rows in the segments afterwards: must equal acked_spans
    refused: int
    cpu_us: dict[str, float]  # CPU microseconds per acknowledged span, by process


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _children_cpu(process: psutil.Process) -> float:
    total = 0.0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it may exit meanwhile
            total += _cpu(child)
    return total


def end_to_end(bodies: list[bytes], clients: int, seconds: float, fsync: bool) -> Run:
    """Run `callscope ingest` in a subprocess, load it for `seconds`, stop it, count what it stored."""
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
        url = urllib.parse.urlsplit(line.split()[2])
        acked = [0] * clients
        refused = [0] * clients
        stop = threading.Event()

        def client(number: int) -> None:
            connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
            headers = {"content-type": "application/x-protobuf"}
            index = number
            try:
                while not stop.is_set():
                    connection.request("POST", url.path, bodies[index % len(bodies)], headers)
                    response = connection.getresponse()
                    response.read()
                    if response.status == 200:
                        acked[number] += BATCH
                    else:
                        refused[number] += 1
                        time.sleep(float(response.getheader("retry-after") or "1") / 10)
                    index += clients
            finally:
                connection.close()

        me, ingest = psutil.Process(), psutil.Process(process.pid)
        cpu_before = (_cpu(me), _cpu(ingest), _children_cpu(ingest))
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        acknowledged_at = time.perf_counter()
        cpu_after = (_cpu(me), _cpu(ingest), _children_cpu(ingest))
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=600)
        process.stderr.close()
        finished = time.perf_counter()
        total = sum(acked)
        with DataDir(data).connect_readonly() as con:
            stored = con.execute("select count(*) from spans_raw").fetchone()[0]  # type: ignore[index]
        # The roll-up worker's CPU is counted while the clients ran; it finishes the rest after.
        names = ("clients", "ingest", "roll-up")
        cpu_us = {
            name: (after - before) * 1e6 / max(total, 1)
            for name, before, after in zip(names, cpu_before, cpu_after, strict=True)
        }
        return Run(
            end_to_end=total / (finished - started),
            acknowledged=total / (acknowledged_at - started),
            acked_spans=total,
            stored=int(stored),
            refused=sum(refused),
            cpu_us=cpu_us,
        )


def _cpu_us_per_span(work: Any, spans: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1e6 / spans


def _parquet_write(table: pa.Table, segment_settings: bool) -> int:
    """Write `table` as ingest writes a segment (in memory, no fsync); returns the bytes."""
    sink = io.BytesIO()
    options: dict[str, Any] = (
        {
            "use_dictionary": list(SEGMENT_DICTIONARY_COLUMNS),
            "write_statistics": list(SEGMENT_STATISTICS_COLUMNS),
        }
        if segment_settings
        else {}
    )
    pq.write_table(
        table,
        sink,
        compression=COMPRESSION,
        compression_level=COMPRESSION_LEVEL,
        row_group_size=128 * 1024,
        **options,
    )
    return sink.tell()


def per_service(body: bytes) -> bytes:
    """The same spans with each source's spans together, as collectors deployed one per service
    export them (sample_request mixes the three sources call by call in every request)."""
    request = parse_protobuf(body)
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans = sorted(scope_spans.spans, key=lambda span: span.name)  # stable: time order kept
            copies = [type(span)() for span in spans]
            for copy, span in zip(copies, spans, strict=True):
                copy.CopyFrom(span)
            del scope_spans.spans[:]
            scope_spans.spans.extend(copies)
    return request.SerializeToString()


def rollup_costs(bodies: list[bytes]) -> None:
    """Print the roll-up's CPU per span: decoding WAL records, writing the segment (see module doc)."""
    spans = sum(decode_protobuf(body, 1).accepted for body in bodies)
    decode = _cpu_us_per_span(
        lambda: [decode_protobuf(body, 1, parsed_before=True) for body in bodies], spans
    )
    groups: list[list[tuple[bytes, int]]] = [[]]
    for i, body in enumerate(bodies):  # as the roll-up groups WAL records
        if groups[-1] and sum(len(b) for b, _ in groups[-1]) + len(body) > WALK_BYTES:
            groups.append([])
        groups[-1].append((body, i))
    walk = _cpu_us_per_span(lambda: [fast_records_to_table(group) for group in groups], spans)
    print(f"roll-up work, one thread, {spans:,} spans (a segment): CPU us/span, bytes/span")
    print(f"    decode WAL records one by one (C, parsed before):        {decode:.2f} us")
    print(f"    decode them {WALK_BYTES >> 10} KiB per walk (walk_records, the roll-up): {walk:.2f} us")
    for layout, batch in (
        ("mixed requests", bodies),
        ("one source per request", [per_service(b) for b in bodies]),
    ):
        table = pa.concat_tables(
            decode_protobuf(body, 1_700_000_000_000_000_000 + i).table for i, body in enumerate(batch)
        )
        untyped = table.drop_columns([MINIVOICE_COLUMN])
        for label, rows in (("with the minivoice column", table), ("without it (as before)", untyped)):
            for settings, name in ((True, "segment settings"), (False, "pyarrow defaults")):
                cpu = _cpu_us_per_span(
                    lambda rows=rows, settings=settings: _parquet_write(rows, settings), spans
                )
                size = _parquet_write(rows, settings) / spans
                print(f"    Parquet, {layout:22s} {label:26s} {name:17s} {cpu:5.2f} us  {size:5.1f} B")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rollup-only", action="store_true", help="only the roll-up cost breakdown")
    args = parser.parse_args()

    bodies = [sample_request(BATCH, seed=seed).SerializeToString() for seed in range(64)]
    if args.rollup_only:
        rollup_costs([sample_request(BATCH, seed=seed).SerializeToString() for seed in range(64, 264)])
        return
    print(
        f"batches of {BATCH} spans, {len(bodies[0]) / BATCH:.0f} bytes/span on the wire, "
        f"{args.clients} clients, {args.seconds:g} s per run, median of {args.repeats}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    # Interleaved rounds (decode-only, then end to end with and without fsync), so that the ratios
    # compare figures measured minutes apart at most, whatever else the machine is doing.
    python: list[float] = []
    decode: list[float] = []
    runs: dict[bool, list[Run]] = {True: [], False: []}
    for _ in range(args.repeats):
        python.append(decode_rate(bodies, 2.0, python=True))
        decode.append(decode_rate(bodies, 3.0))
        for fsync in (True, False):
            run = end_to_end(bodies, args.clients, args.seconds, fsync)
            assert run.stored == run.acked_spans > 0, f"stored {run.stored} != acknowledged {run.acked_spans}"
            runs[fsync].append(run)
    decoder = "C extension" if _otlp_fast is not None else "Python: the C extension is NOT built"
    ceiling = statistics.median(decode)
    print(
        f"decode only, Python path:  {statistics.median(python):>10,.0f} spans/s  "
        f"({statistics.median(DECODE_CPU_US[True]):.2f} CPU us/span)"
    )
    print(
        f"decode only (ceiling):     {ceiling:>10,.0f} spans/s  ({decoder}; "
        f"{statistics.median(DECODE_CPU_US[False]):.2f} CPU us/span; "
        f"{statistics.median(d / p for d, p in zip(decode, python, strict=True)):.1f}x Python; "
        f"rounds: {', '.join(f'{d:,.0f}' for d in decode)})"
    )
    results = {}
    for fsync in (True, False):
        these = runs[fsync]
        e2e = statistics.median(r.end_to_end for r in these)
        ratio = statistics.median(r.end_to_end / d for r, d in zip(these, decode, strict=True))
        ack = statistics.median(r.acknowledged for r in these)
        cpu = {name: statistics.median(r.cpu_us[name] for r in these) for name in these[0].cpu_us}
        refused = sum(r.refused for r in these)
        results[fsync] = (e2e, ratio)
        label = "fsync" if fsync else "no fsync"
        print(
            f"end to end ({label:>8}):    {e2e:>10,.0f} spans/s  (acknowledged at {ack:,.0f} spans/s; "
            f"{ratio:.2f}x decode-only of the same round; "
            f"rounds: {', '.join(f'{r.end_to_end:,.0f}' for r in these)})"
        )
        print(
            "    CPU us/span: "
            + ", ".join(f"{name} {value:.1f}" for name, value in cpu.items())
            + (f"; {refused} requests refused with 429/503 and retried" if refused else "")
        )
    on, off = runs[True], runs[False]
    cost = statistics.median(b.end_to_end / a.end_to_end for a, b in zip(on, off, strict=True))
    print(f"durability cost (fsync off vs on, same round): {cost:.2f}x")
    print(
        f"target: >= 100,000 spans/s end to end: {results[True][0] / 100_000:.2f}x of target; "
        f">= 0.5x decode-only: {results[True][1]:.2f}x; load average {os.getloadavg()[0]:.1f} at the end"
    )
    # 200 distinct batches (~100k spans, one roll-up segment's worth), unlike the 64 reused above
    rollup_costs([sample_request(BATCH, seed=seed).SerializeToString() for seed in range(64, 264)])


if __name__ == "__main__":
    main()
