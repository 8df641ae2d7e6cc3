"""Benchmark: the dashboard's queries at 1M calls (issue 6). Not a test: prints figures.

    .venv/bin/python bench/dashboard.py [--calls 1000000] [--repeat 7] [--keep DIR]

Generates `calls` Parquet directly, in the build's stored layout (`pipeline.tables`: one base file,
read through the same views), vectorised with NumPy: a realistic verdict mix over 24 hours; the
`call_events` view derives each call's points from its spans. Written into a data directory, then
times with medians over `--repeat` runs:

- the overview: what the Overview page reads for one refresh (KPIs for the window and the one
  before, failures by verdict and over time, the funnel, top applications and customers, spans
  without a call id), over the last 24 hours and over all time; the sidebar's filter options,
  which the page caches for a minute, on their own;
- the call detail: the calls row, call_events and spans of one call (the dashboard keeps one
  connection with the views, re-made every 15 s: opening it is timed on its own);
- baselines in the same run: a bare scan + GROUP BY of the stored calls file (the floor of any
  overview query), and the same through the `calls` view (which picks each call's latest row).

The spans of the same calls (about 6 per call) come from bench/pipeline.py's generator, so the
call detail's span lookup runs against a realistic `spans_raw` (`--no-spans` skips them).

Targets: overview <= 1 s, call detail <= 100 ms.

`--views latest-row-window` measures the same queries with the `calls` view written with a window
function instead of the build's `IN (SELECT call_id, max(_version) ...)` semi-join (same rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
# bench/pipeline.py would shadow the `pipeline` package: keep this directory off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from collectors.identity import call_trace_id_hex  # noqa: E402
from pipeline import dashboard_queries as q  # noqa: E402
from pipeline.storage import DataDir  # noqa: E402
from pipeline.tables import CALLS_SCHEMA, VERSION_COLUMN  # noqa: E402
from pipeline.timeline import CALLS_ROW_GROUP_SIZE  # noqa: E402

#: Verdict mix: (verdict, failure_stage, share).
MIX: tuple[tuple[str, str, float], ...] = (
    ("ok", "none", 0.80),
    ("no_stream", "none", 0.03),
    ("in_progress", "none", 0.02),
    ("answer_url_failed", "answer_url", 0.02),
    ("invalid_action", "action", 0.03),
    ("stream_not_connected", "connect", 0.03),
    ("no_media", "media", 0.02),
    ("stream_dropped", "stream", 0.03),
    ("receiver_error", "stream", 0.005),
    ("webhook_missing", "lifecycle", 0.005),
    ("call_failed", "lifecycle", 0.01),
)


def synthetic_calls(n: int, start: datetime, seed: int = 7) -> pa.Table:
    """The `calls` table for `n` calls `call_00000000`... first seen evenly over the
    24 hours after `start` (as bench/pipeline.py spaces the spans of the same call ids)."""
    rng = np.random.default_rng(seed)
    shares = np.array([m[2] for m in MIX])
    kind = rng.choice(len(MIX), size=n, p=shares / shares.sum())
    verdicts = np.array([m[0] for m in MIX], dtype=object)[kind]
    stages = np.array([m[1] for m in MIX], dtype=object)[kind]
    start_us = int(start.timestamp() * 1_000_000)
    first_us = start_us + np.arange(n, dtype=np.int64) * (86_400 * 1_000_000 // n) + 5_000_000
    duration_us = rng.integers(20, 600, size=n) * 1_000_000
    call_ids = np.char.add("call_", np.char.zfill(np.arange(n).astype(str), 8)).astype(object)
    apps = np.char.add("app_", rng.zipf(1.6, size=n).clip(1, 200).astype(str)).astype(object)
    customers = np.char.add("cust_", rng.zipf(1.4, size=n).clip(1, 5000).astype(str)).astype(object)
    streamed = ~np.isin(verdicts, ["answer_url_failed", "invalid_action", "no_stream"])
    connected = streamed & (verdicts != "stream_not_connected")
    media = connected & (verdicts != "no_media")
    final = verdicts != "in_progress"

    def ts(values: np.ndarray, mask: np.ndarray) -> pa.Array:
        return pa.array(values, type=pa.timestamp("us"), mask=~mask)

    close_code = np.where(verdicts == "stream_dropped", 1006, 1000)
    calls = pa.table(
        {
            "call_id": pa.array(call_ids, pa.string()),
            "trace_id": pa.array([call_trace_id_hex(c) for c in call_ids], pa.string()),
            "verdict": pa.array(verdicts, pa.string()),
            "failure_stage": pa.array(stages, pa.string()),
            "reason": pa.array(np.char.add("because ", verdicts.astype(str)).astype(object), pa.string()),
            "next_step": pa.array(np.char.add("check ", stages.astype(str)).astype(object), pa.string()),
            "is_final": pa.array(final),
            "customer_id": pa.array(customers, pa.string()),
            "application_id": pa.array(apps, pa.string()),
            "direction": pa.array(np.where(rng.random(n) < 0.6, "inbound", "outbound").astype(object)),
            "call_status": pa.array(
                np.where(verdicts == "call_failed", "busy", "completed").astype(object),
                pa.string(),
                mask=~final,
            ),
            "first_seen_at": ts(first_us, np.ones(n, bool)),
            "answer_url_status": pa.array(np.where(verdicts == "answer_url_failed", 500, 200), pa.int32()),
            "action_valid": pa.array(verdicts != "invalid_action"),
            "stream_url": pa.array(
                np.full(n, "wss://media.example.com/minivoice", dtype=object), pa.string()
            ),
            "track": pa.array(np.full(n, "both", dtype=object), pa.string()),
            "connected_at": ts(first_us + 300_000, connected),
            "first_media_at": ts(first_us + 400_000, media),
            "last_media_at": ts(first_us + duration_us - 500_000, media),
            "media_frames": pa.array(np.where(media, duration_us // 20_000, 0), pa.int64()),
            "media_gap_max_ms": pa.array(rng.integers(20, 400, size=n), pa.int64(), mask=~media),
            "disconnected_at": ts(first_us + duration_us - 100_000, connected),
            "close_code": pa.array(close_code, pa.int32(), mask=~connected),
            "closed_by": pa.array(
                np.where(close_code == 1006, "network", "platform").astype(object),
                pa.string(),
                mask=~connected,
            ),
            "completed_at": ts(first_us + duration_us, final & (verdicts != "webhook_missing")),
            "webhook_count": pa.array(np.where(final, 3, 2), pa.int32()),
            "duplicate_webhooks": pa.array(rng.integers(0, 2, size=n) * (rng.random(n) < 0.05), pa.int32()),
            "receiver_clock_skew_ms": pa.array(rng.normal(0, 30, size=n).round(), pa.float64()),
        }
    )
    calls = _conform(calls, CALLS_SCHEMA, {"last_seen_at": calls["completed_at"]})
    calls = calls.append_column(VERSION_COLUMN, pa.array(np.ones(n, dtype=np.int64)))

    return calls


def _conform(table: pa.Table, schema: pa.Schema, extra: dict[str, pa.ChunkedArray] | None = None) -> pa.Table:
    """`table` with exactly `schema`'s columns (as the build writes them); missing ones are null."""
    extra = extra or {}
    columns = []
    for field in schema:
        if field.name in extra:
            column = extra[field.name]
        elif field.name in table.column_names:
            column = table[field.name]
        else:
            column = pa.nulls(table.num_rows, field.type)
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of `fn()` in milliseconds, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def overview_queries(con: duckdb.DuckDBPyConnection, flt: q.CallFilter) -> None:
    """Everything one Overview refresh reads: the figures and the count of spans without a call id.
    (The sidebar's filter options are cached a minute by the page; timed on their own.)"""
    q.overview(con, flt, timedelta(minutes=15))
    q.spans_without_call_id(con)


def detail_queries(con: duckdb.DuckDBPyConnection, call_id: str) -> None:
    """Everything the Call detail page reads for one call (`call_detail`)."""
    q.call_detail(con, call_id)


def detail_queries_separately(con: duckdb.DuckDBPyConnection, call_id: str) -> None:
    """The same, one view at a time: the calls row, `call_events` (its own scan of the spans),
    the spans. The baseline for `call_detail`."""
    call = q.call_row(con, call_id)
    q.call_events(con, call_id)
    q.call_spans(con, call_id, call)


def use_window_views() -> None:
    """Replace the timeline's `calls` view, for this process, by the same view with each call's
    latest row picked by `row_number()` over the call's rows (see `--views`; `call_events` reads
    the `calls` view by name)."""
    from pipeline import storage
    from pipeline.tables import CALLS

    calls_files = "read_parquet({glob}, union_by_name=true)"
    latest = (
        f"SELECT * EXCLUDE ({VERSION_COLUMN}, _rn) FROM (SELECT *, row_number() OVER "
        f"(PARTITION BY call_id ORDER BY {VERSION_COLUMN} DESC) AS _rn FROM {calls_files}) WHERE _rn = 1"
    )
    escape = str.maketrans({"{": "{{", "}": "}}"})
    storage.TABLE_VIEWS[CALLS] = latest.translate(escape).replace("{{glob}}", "{glob}")


def write_spans(data: DataDir, n_calls: int) -> int:
    """The spans of the same call ids (`call_%08d`), made by the pipeline benchmark's generator
    (bench/pipeline.py, vectorised DuckDB SQL), as ingest's segments. Returns the span count."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "bench" / "pipeline.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    total = 0
    chunk = 100_000  # bounded memory: about 600k spans at a time
    with duckdb.connect() as con:
        for first in range(0, n_calls, chunk):
            table = generator.generate_spans(
                con, first, min(chunk, n_calls - first), 86_400_000_000_000 // n_calls
            )
            data.write_segment(table)
            total += table.num_rows
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-spans", action="store_true", help="skip the spans (call detail without them)")
    parser.add_argument(
        "--keep", type=Path, help="write the data directory here and keep it; reuse it if it has the calls"
    )
    parser.add_argument(
        "--views",
        choices=("build", "latest-row-window"),
        default="build",
        help="build: the views as pipeline.tables defines them; latest-row-window: the same views "
        "with each call's latest row picked by a window function (row_number() OVER (PARTITION BY "
        "call_id ...)), which lets DuckDB push a call_id filter down",
    )
    args = parser.parse_args()
    if args.views == "latest-row-window":
        use_window_views()

    with tempfile.TemporaryDirectory(prefix="callscope-bench-") as tmp:
        data = DataDir(args.keep or tmp, fsync=False)
        # The day bench/pipeline.py generates spans for, so that each call's spans are where its
        # date partition says (the call detail reads only those partitions).
        start = datetime(2026, 5, 29, tzinfo=UTC)
        end = start + timedelta(days=1)
        started = time.perf_counter()
        stored_calls = data.path / "calls" / "base-000001.parquet"
        if (
            stored_calls.exists()
            and pq.read_metadata(stored_calls).num_rows == args.calls
            and pq.read_metadata(stored_calls).row_group(0).num_rows == min(args.calls, CALLS_ROW_GROUP_SIZE)
        ):
            print(f"reusing the {args.calls:,} calls in {data.path}")
        else:
            calls = synthetic_calls(args.calls, start)
            # The build's layout: one consolidated base file (pipeline.tables).
            data.write_table_file(
                "calls", calls, filename="base-000001.parquet", row_group_size=CALLS_ROW_GROUP_SIZE
            )
            spans = 0 if args.no_spans else write_spans(data, args.calls)
            print(
                f"generated {calls.num_rows:,} calls and {spans:,} spans (call_events: a view over them) "
                f"in {time.perf_counter() - started:.1f} s"
            )
        last_day = q.last(timedelta(hours=24), end)
        everything = q.CallFilter()
        probe = f"call_{args.calls // 2:08d}"
        stored = f"read_parquet('{data.table_glob('calls')}')"

        # The dashboard keeps one connection with the views and runs each page on a cursor of it.
        con = q.open_views(data.path)
        figures = {
            "floor: scan of the calls file": median_ms(
                lambda: con.execute(f"SELECT verdict, count(*) FROM {stored} GROUP BY verdict").fetchall(),
                args.repeat,
            ),
            "one scan of the calls view": median_ms(
                lambda: con.execute("SELECT verdict, count(*) FROM calls GROUP BY verdict").fetchall(),
                args.repeat,
            ),
            "overview, last 24 hours": median_ms(lambda: overview_queries(con, last_day), args.repeat),
            "overview, all time": median_ms(lambda: overview_queries(con, everything), args.repeat),
            "call detail": median_ms(lambda: detail_queries(con, probe), args.repeat),
            "call detail, one view at a time": median_ms(
                lambda: detail_queries_separately(con, probe), args.repeat
            ),
            "filter options (cached 60 s)": median_ms(lambda: q.filter_options(con), args.repeat),
            "open the views (cached 15 s)": median_ms(lambda: q.open_views(data.path).close(), args.repeat),
        }
        con.close()
        base = figures["floor: scan of the calls file"]
        print(f"{args.calls:,} calls, median of {args.repeat} runs")
        for name, ms in figures.items():
            print(f"  {name:<31} {ms:8.1f} ms   {ms / base:6.1f}x floor")
        overview = max(figures["overview, last 24 hours"], figures["overview, all time"])
        print(f"overview target 1000 ms: {'met' if overview <= 1000 else 'MISSED'} ({overview:.0f} ms)")
        detail = figures["call detail"]
        print(f"call detail target 100 ms: {'met' if detail <= 100 else 'MISSED'} ({detail:.0f} ms)")


if __name__ == "__main__":
    main()
