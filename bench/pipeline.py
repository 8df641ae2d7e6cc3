"""Benchmark: `callscope build` over N generated calls, against two references measured in the same run.

    .venv/bin/python bench/pipeline.py                # N = 1,000,000 calls (about 6.3M spans)
    .venv/bin/python bench/pipeline.py --calls 100000 --keep /tmp/bench-data

Steps:
1. generate spans for N calls with a realistic failure mix, as Parquet segments in SPAN_SCHEMA under
   `DIR/spans/date=.../` (generated vectorised in DuckDB SQL, not through the SDK);
2. `callscope build --data DIR` in a subprocess: wall time and peak RSS (getrusage of the children);
3. the floor: a bare DuckDB scan + GROUP BY call_id over the same spans and the same columns;
4. the straightforward script an engineer would write: read rows, group in dicts, if/else;
5. an incremental update: 10k new spans (new calls and late spans of existing calls) over the N calls,
   applied by the `--follow` step in-process (the figure that matters for `--follow`), and as a
   one-shot `callscope build` subprocess (includes interpreter start-up and state loading).

Prints medians and the ratios against the targets in issue 4.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
# This script is called pipeline.py: keep its own directory off the path so `pipeline` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from pipeline.schema import UNTYPED_SPAN_SCHEMA  # noqa: E402
from pipeline.storage import DataDir  # noqa: E402

#: 2026-05-29T00:00:00Z, the day of the MiniVoice doc's webhook example.
DAY_START_NS = 1_780_012_800 * 1_000_000_000
SECOND = "1000000000::BIGINT"  # in SQL text: keep the arithmetic in BIGINT

# The failure mix, in basis points of calls (the rest are ok). Roughly what a busy platform sees.
MIX = (
    ("answer_url_failed", 200),
    ("invalid_action", 400),
    ("stream_not_connected", 200),
    ("no_media", 200),
    ("stream_dropped", 400),
    ("receiver_error", 100),
    ("webhook_missing", 100),
    ("call_failed", 300),
    ("no_stream", 100),
)


def _scenario_sql() -> str:
    cases = []
    low = 0
    for name, share in MIX:
        cases.append(f"WHEN u < {low + share} THEN '{name}'")
        low += share
    return "CASE " + " ".join(cases) + " ELSE 'ok' END"


# One row per call with its scenario and times (all ns). `k` is the call number.
CALLS_SQL = f"""
SELECT k, call_id, scenario,
       sha256('minivoice-call/' || call_id) AS digest,
       t0, t0 + 5 * {SECOND} AS answered_ns,
       t0 + 5 * {SECOND} + 100000000 AS au_start,
       (CASE WHEN scenario = 'answer_url_failed' AND k % 2 = 0 THEN 6500 ELSE 40 + k % 160 END)::BIGINT
           AS au_latency_ms,
       t0 + 5 * {SECOND} + 400000000 AS rx_connect,
       (30 + k % 240) * {SECOND} AS duration,
       CASE WHEN k % 97 = 3 THEN 4200000000 ELSE 0 END AS rx_skew,
       k % 20 = 0 AS dup_completed
FROM (
    SELECT k, printf('call_%08d', k) AS call_id, hash(k, 'scenario') % 10000 AS u,
           $day_start + k * $spacing AS t0
    FROM range($first, $first + $n) t(k)
) calls, LATERAL (SELECT {_scenario_sql()} AS scenario)
"""

_HTTP = (
    '"http.request.method":"POST","url.scheme":"https","server.address":"app.example.com",'
    '"server.port":443,"client.address":"203.0.113.7","user_agent.original":"MiniVoice-Webhooks/1.0",'
    '"callscope.collector.version":"0.1.0",'
)
_CALL = (
    '"minivoice.customer_id":"cust_' + "' || (k % 500) || '" + '","minivoice.application_id":"app_'
    "' || (k % 40) || '"
    '","minivoice.direction":"' + "' || CASE WHEN k % 3 = 0 THEN 'inbound' ELSE 'outbound' END || '" + '",'
    '"minivoice.from.masked":"+1555***' + "' || lpad((k % 10000)::VARCHAR, 4, '0') || '" + '",'
    '"minivoice.to.masked":"+1555***0002",'
    '"minivoice.from.hash":"hmac-sha256:' + "' || sha256('from' || (k % 10000)) || '" + '",'
    '"minivoice.to.hash":"hmac-sha256:9f2c0e4b6b8f0d1d2e3c4b5a69788796a5b4c3d2e1f00112233445566778899a",'
)

ANSWER_URL_SQL = f"""
SELECT call_id, digest, 'answer_url' AS source, 'answer_url' AS name,
       au_start AS start_ns, au_start + au_latency_ms * 1000000 AS end_ns, 'k' || k || 'a' AS salt,
       CASE WHEN scenario IN ('answer_url_failed', 'invalid_action') THEN 'ERROR' ELSE 'UNSET' END
           AS status_code,
       'answer-app' AS service_name,
       '{{' || '{_HTTP}"url.path":"/answer","http.route":"/answer","http.response.status_code":' ||
       (CASE WHEN scenario = 'answer_url_failed' AND k % 2 = 1 THEN 500 ELSE 200 END) ||
       ',"minivoice.call_id":"' || call_id || '","callscope.source":"answer_url",' ||
       '"minivoice.call_id_source":"body","minivoice.event":"call.answered",' ||
       '"minivoice.call.status":"in-progress",' || '{_CALL}' ||
       '"minivoice.answer_url.latency_ms":' || au_latency_ms || '.25,' ||
       CASE
         WHEN scenario = 'answer_url_failed' AND k % 2 = 1 THEN
           '"minivoice.answer_url.response_json":false,' ||
           '"minivoice.answer_url.response_body":"Internal Server Error",' ||
           '"error.type":"500","minivoice.action.count":0,"minivoice.action.valid":false,' ||
           '"minivoice.action.problems":["not_json"],' ||
           '"minivoice.action.problem_messages":["the answer_url response is not JSON"]'
         WHEN scenario = 'invalid_action' THEN
           '"minivoice.answer_url.response_json":true,' ||
           '"minivoice.answer_url.response_body":"{{\\"actions\\":[{{\\"type\\":\\"start_stream\\",' ||
           '\\"stream_url\\":\\"https://media.example.com/minivoice\\",\\"track\\":\\"speaker\\"}}]}}",' ||
           '"minivoice.answer_url.response_truncated":false,"minivoice.action.count":1,' ||
           '"minivoice.action.types":["start_stream"],"minivoice.action.valid":false,' ||
           '"minivoice.action.problems":["stream_url_not_wss","invalid_track"],' ||
           '"minivoice.action.problem_messages":["stream_url scheme is https; MiniVoice requires wss. ' ||
           'Serve the receiver over TLS and change the URL to wss://media.example.com/minivoice",' ||
           '"track is \\"speaker\\"; MiniVoice accepts inbound, outbound or both"],' ||
           '"minivoice.stream_url":"https://media.example.com/minivoice","minivoice.track":"speaker"'
         WHEN scenario = 'no_stream' THEN
           '"minivoice.answer_url.response_json":true,' ||
           '"minivoice.answer_url.response_body":"{{\\"actions\\":[]}}",' ||
           '"minivoice.answer_url.response_truncated":false,"minivoice.action.count":0,' ||
           '"minivoice.action.valid":false,"minivoice.action.problems":["no_actions"],' ||
           '"minivoice.action.problem_messages":["the response has no actions"]'
         ELSE
           '"minivoice.answer_url.response_json":true,' ||
           '"minivoice.answer_url.response_body":"{{\\"actions\\":[{{\\"type\\":\\"start_stream\\",' ||
           '\\"stream_url\\":\\"wss://media.example.com/minivoice?token=REDACTED\\",' ||
           '\\"track\\":\\"both\\"}}]}}",' ||
           '"minivoice.answer_url.response_truncated":false,"minivoice.action.count":1,' ||
           '"minivoice.action.types":["start_stream"],"minivoice.action.valid":true,' ||
           '"minivoice.action.problems":[],"minivoice.action.problem_messages":[],' ||
           '"minivoice.stream_url":"wss://media.example.com/minivoice?token=REDACTED",' ||
           '"minivoice.track":"both"'
       END || '}}' AS attributes,
       []::STRUCT(time_ns BIGINT, name VARCHAR, attributes VARCHAR)[] AS events
FROM calls WHERE scenario <> 'call_failed'
"""

# The receiver's span: connect to close on the receiver's own clock (offset by rx_skew on some hosts).
RECEIVER_SQL = """
SELECT call_id, digest, 'receiver' AS source, 'stream.receiver' AS name,
       rx_connect + rx_skew AS start_ns, close_ns + rx_skew AS end_ns, 'k' || k || 'r' AS salt,
       CASE WHEN scenario IN ('stream_dropped', 'receiver_error') THEN 'ERROR' ELSE 'UNSET' END
           AS status_code,
       CASE WHEN rx_skew <> 0 THEN 'receiver-skewed' ELSE 'receiver' END AS service_name,
       '{"minivoice.call_id":"' || call_id || '","callscope.source":"receiver",' ||
       '"callscope.collector.version":"0.1.0","minivoice.stream_id":"str_' || k || '",' ||
       '"minivoice.call_id_source":"start","minivoice.stream.tracks":["inbound","outbound"],' ||
       '"minivoice.media.encoding":"audio/x-mulaw","minivoice.media.sample_rate":8000,' ||
       '"minivoice.media.channels":1,"minivoice.media.frames":' || frames ||
       ',"minivoice.media.bytes":' || frames * 160 ||
       ',"minivoice.media.inbound.frames":' || frames // 2 ||
       ',"minivoice.media.inbound.bytes":' || frames // 2 * 160 ||
       ',"minivoice.media.outbound.frames":' || frames - frames // 2 ||
       ',"minivoice.media.outbound.bytes":' || (frames - frames // 2) * 160 ||
       ',"minivoice.media.sequence_gaps":0,"minivoice.media.out_of_order":0,' ||
       '"minivoice.media.gap_max_ms":' || CASE WHEN frames > 0 THEN 20 + k % 300 ELSE 0 END || ',' ||
       CASE WHEN frames > 0 THEN
         '"minivoice.media.first_timestamp_ms":20,"minivoice.media.last_timestamp_ms":' ||
         (close_ns - rx_connect) // 1000000 || ',"minivoice.media.last_at_unix_nano":' ||
         close_ns + rx_skew - 20000000 || ','
       ELSE '' END ||
       CASE WHEN has_stop THEN '"minivoice.stop.reason":"call_ended",' ELSE '' END ||
       '"minivoice.close.code":' || close_code || ',"minivoice.close.reason":"' || close_reason ||
       '","minivoice.closed_by":"' || closed_by || '","minivoice.errors":' || errors ||
       ',"url.path":"/minivoice","url.query":"token=REDACTED","client.address":"198.51.100.23"}'
           AS attributes,
       list_concat(
         [{'time_ns': rx_connect + rx_skew, 'name': 'connected',
            'attributes': '{"minivoice.protocol":"minivoice.stream","minivoice.protocol_version":"1"}'},
          {'time_ns': rx_connect + rx_skew + 2000000, 'name': 'start',
            'attributes': '{"minivoice.call_id":"' || call_id || '","minivoice.stream_id":"str_' || k ||
                          '","minivoice.stream.tracks":["inbound","outbound"],' ||
                          '"minivoice.media.encoding":"audio/x-mulaw","minivoice.media.sample_rate":8000,' ||
                          '"minivoice.media.channels":1}'}],
         CASE WHEN frames > 0 THEN
           [{'time_ns': rx_connect + rx_skew + 22000000, 'name': 'first_media',
              'attributes': '{"minivoice.media.track":"inbound","minivoice.media.chunk":1,' ||
                            '"minivoice.media.timestamp_ms":20}'}]
         ELSE [] END,
         CASE WHEN errors > 0 THEN
           [{'time_ns': rx_connect + rx_skew + 900000000, 'name': 'error',
              'attributes': '{"error.type":"handler_exception",' ||
                            '"error.message":"TranscriberTimeout: upstream ASR did not answer"}'}]
         ELSE [] END,
         CASE WHEN has_stop THEN
           [{'time_ns': close_ns + rx_skew - 5000000, 'name': 'stop',
              'attributes': '{"minivoice.stop.reason":"call_ended"}'}]
         ELSE [] END
       ) AS events
FROM (
    SELECT *,
           CASE WHEN scenario = 'stream_dropped' THEN rx_connect + duration * 2 // 5
                ELSE rx_connect + duration END AS close_ns,
           CASE WHEN scenario = 'no_media' THEN 0 ELSE (duration // 20000000)::BIGINT END AS frames,
           scenario <> 'stream_dropped' AS has_stop,
           CASE WHEN scenario = 'stream_dropped' AND k % 2 = 0 THEN 1011
                WHEN scenario = 'stream_dropped' THEN 1006 ELSE 1000 END AS close_code,
           CASE WHEN scenario = 'stream_dropped' AND k % 2 = 0 THEN 'transcriber crashed'
                WHEN scenario = 'stream_dropped' THEN '' ELSE 'call ended' END AS close_reason,
           CASE WHEN scenario = 'stream_dropped' AND k % 2 = 0 THEN 'receiver'
                WHEN scenario = 'stream_dropped' THEN 'network' ELSE 'platform' END AS closed_by,
           CASE WHEN scenario = 'receiver_error' THEN 3 ELSE 0 END AS errors
    FROM calls
    WHERE scenario NOT IN ('call_failed', 'answer_url_failed', 'invalid_action', 'stream_not_connected',
                           'no_stream')
)
"""

# Webhook deliveries: (event, created_at) per call, then one span per delivery.
WEBHOOKS_SQL = f"""
SELECT call_id, digest, 'webhook' AS source, 'webhook' AS name,
       true_ns + 40000000 + (k % 200) * 1000000 AS start_ns,
       true_ns + 43000000 + (k % 200) * 1000000 AS end_ns, 'k' || k || 'w' || n AS salt,
       'UNSET' AS status_code, 'webhook-app' AS service_name,
       '{{' || '{_HTTP}"url.path":"/webhooks","http.route":"/webhooks","http.response.status_code":200,' ||
       '"minivoice.call_id":"' || call_id || '","callscope.source":"webhook",' ||
       '"minivoice.event":"' || event || '","minivoice.webhook.created_at":"' ||
       strftime(make_timestamp(created_ns // 1000), '%Y-%m-%dT%H:%M:%SZ') ||
       '","minivoice.webhook.created_at_unix_nano":' || created_ns ||
       ',"minivoice.call.status":"' || status || '",' || '{_CALL}' ||
       '"minivoice.webhook.duplicate":' || (n > 10) || '}}' AS attributes,
       []::STRUCT(time_ns BIGINT, name VARCHAR, attributes VARCHAR)[] AS events
FROM (
    SELECT *, true_ns // {SECOND} * {SECOND} AS created_ns  -- whole seconds, like the doc's example
    FROM (
    SELECT c.*, w.n, w.event, w.status,
           CASE w.n WHEN 1 THEN t0 WHEN 2 THEN t0 + {SECOND} WHEN 3 THEN answered_ns
                    ELSE rx_connect + duration + 50000000 END AS true_ns
    FROM calls c, LATERAL (
        SELECT * FROM (VALUES
            (1, 'call.initiated', 'initiated'),
            (2, 'call.ringing', 'ringing'),
            (3, 'call.answered', 'in-progress'),
            (4, 'call.completed', CASE WHEN c.scenario = 'call_failed'
                                       THEN CASE WHEN c.k % 2 = 0 THEN 'busy' ELSE 'no-answer' END
                                       ELSE 'completed' END),
            (14, 'call.completed', 'completed')
        ) v(n, event, status)
    ) w
    WHERE NOT (w.n = 3 AND c.scenario = 'call_failed')
      AND NOT (w.n IN (4, 14) AND c.scenario = 'webhook_missing')
      AND NOT (w.n = 14 AND (NOT c.dup_completed OR c.scenario = 'call_failed'))
    )
)
"""

SPANS_SQL = f"""
WITH calls AS ({CALLS_SQL}),
spans AS ({ANSWER_URL_SQL} UNION ALL {RECEIVER_SQL} UNION ALL {WEBHOOKS_SQL})
SELECT substr(digest, 1, 32) AS trace_id,
       printf('%016x', hash(salt, 'span') | 1) AS span_id,
       substr(digest, 33, 16) AS parent_span_id,
       NULL::VARCHAR AS trace_state, name, 'SERVER' AS kind, start_ns, end_ns, status_code,
       NULL::VARCHAR AS status_message, service_name, 'callscope.' || source AS scope_name,
       '0.1.0' AS scope_version, call_id, source, attributes,
       '{{"service.name":"' || service_name || '","host.name":"' || service_name || '-1"}}'
           AS resource_attributes,
       events, NULL::VARCHAR AS links, end_ns + 3 * {SECOND} AS ingested_at_ns
FROM spans
ORDER BY end_ns
"""


def generate_spans(con: duckdb.DuckDBPyConnection, first: int, n_calls: int, spacing_ns: int) -> pa.Table:
    """Spans for calls first..first+n_calls-1, in SPAN_SCHEMA, ordered by end time (export order)."""
    params = {"first": first, "n": n_calls, "day_start": DAY_START_NS, "spacing": spacing_ns}
    table = con.sql(SPANS_SQL, params=params).to_arrow_table()
    return table.cast(UNTYPED_SPAN_SCHEMA)


def _promote(con: duckdb.DuckDBPyConnection, table: pa.Table) -> pa.Table:
    """Add the typed `minivoice` column, as the proposed ingest would (pipeline/schema.py)."""
    from pipeline.facts import minivoice_from_json_sql
    from pipeline.schema import MINIVOICE_COLUMN, MINIVOICE_TYPE

    con.register("generated", table)
    promoted = con.sql(
        f"SELECT *, {minivoice_from_json_sql()} AS {MINIVOICE_COLUMN} FROM generated"
    ).to_arrow_table()
    con.unregister("generated")
    column = promoted.schema.get_field_index(MINIVOICE_COLUMN)
    return promoted.set_column(column, MINIVOICE_COLUMN, promoted[MINIVOICE_COLUMN].cast(MINIVOICE_TYPE))


def write_segments(data: DataDir, table: pa.Table, rows_per_segment: int = 300_000) -> int:
    """Write rows as ingest does (`DataDir.write_segment`: segments per UTC date, atomically, with
    ingest's Parquet settings), `rows_per_segment` at a time. Returns the number of files."""
    files = 0
    for offset in range(0, table.num_rows, rows_per_segment):
        files += len(data.write_segment(table.slice(offset, rows_per_segment), refresh=False))
    data.refresh_views_if_changed()
    return files


def generate(data: DataDir, n_calls: int, *, promoted: bool, chunk: int = 50_000) -> int:
    """Spans for `n_calls` calls spread over one day, written as segments. Returns the span count."""
    spacing = 86_400_000_000_000 // n_calls
    spans = 0
    with duckdb.connect() as con:
        for first in range(0, n_calls, chunk):
            table = generate_spans(con, first, min(chunk, n_calls - first), spacing)
            if promoted:
                table = _promote(con, table)
            spans += table.num_rows
            write_segments(data, table)
    return spans


def late_batch(n_calls: int, size: int, salt: int, *, promoted: bool) -> pa.Table:
    """About `size` new spans: 90% from new calls, 10% late webhook deliveries for existing calls."""
    with duckdb.connect() as con:
        spacing = 86_400_000_000_000 // n_calls
        new_calls = int(size * 0.9 / 5.85)
        fresh = generate_spans(con, n_calls + salt * new_calls, new_calls, spacing)
        existing = generate_spans(con, (salt * 7919) % max(1, n_calls - size), size, spacing)
        con.register("existing", existing)
        late = con.sql(
            "SELECT * REPLACE (printf('%016x', hash(span_id, 'late') | 1) AS span_id) FROM existing "
            f"WHERE source = 'webhook' AND attributes LIKE '%call.completed%' LIMIT {size - fresh.num_rows}"
        ).to_arrow_table()
        batch = pa.concat_tables([fresh, late.cast(UNTYPED_SPAN_SCHEMA)])
        now = time.time_ns()
        batch = batch.set_column(
            batch.schema.get_field_index("ingested_at_ns"),
            "ingested_at_ns",
            pa.array([now] * batch.num_rows, pa.int64()),
        )
        return _promote(con, batch) if promoted else batch


# ---- the references -------------------------------------------------------------------------

FLOOR_TEMPLATE = """
SELECT count(*), sum(hash(t)) FROM (
    SELECT call_id, count(*) AS spans, {aggregates}
    FROM read_parquet({files}, union_by_name=true)
    GROUP BY call_id
) t
"""


def floor_sql(files: list[str], *, promoted: bool) -> str:
    """The floor: a bare scan + GROUP BY call_id over the columns the build reads (the span columns
    and `minivoice` fields its facts read, `pipeline.facts`), one max() of each."""
    from pipeline.facts import SPAN_COLUMNS_READ, minivoice_fields_read
    from pipeline.schema import MINIVOICE_COLUMN, MINIVOICE_FIELDS

    aggregates = [
        f"max(len({column}))" if column == "events" else f"max({column})"
        for column in SPAN_COLUMNS_READ
        if column != "call_id"
    ]
    if promoted:
        types = {name: t for name, _, t in MINIVOICE_FIELDS}
        for name in minivoice_fields_read():
            field = f"{MINIVOICE_COLUMN}.{name}"
            aggregates.append(f"max(len({field}))" if pa.types.is_list(types[name]) else f"max({field})")
    else:
        aggregates.append("max(length(attributes))")
    listed = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    return FLOOR_TEMPLATE.format(aggregates=", ".join(aggregates), files=listed)


def naive(files: list[str], out: Path) -> tuple[int, int]:
    """The script an engineer would write: read rows, group them in dicts, if/else, write the result."""
    calls: dict[str, dict[str, Any]] = {}
    spans = 0
    for path in files:
        table = pq.read_table(
            path, columns=["call_id", "source", "start_ns", "end_ns", "attributes", "events"]
        )
        for row in table.to_pylist():
            spans += 1
            call_id = row["call_id"]
            if call_id is None:
                continue
            attrs = json.loads(row["attributes"])
            call = calls.setdefault(call_id, {"webhooks": defaultdict(int), "connections": 0, "frames": 0})
            source = row["source"]
            if source == "answer_url":
                status = attrs.get("http.response.status_code")
                ok = (
                    status is not None
                    and 200 <= status < 300
                    and attrs.get("minivoice.answer_url.response_json", True)
                    and attrs.get("minivoice.answer_url.latency_ms", 0) <= 5000
                )
                if ok and "answer_ok" not in call:
                    call["answer_ok"] = attrs
                elif not ok:
                    call["answer_failed"] = attrs
            elif source == "receiver":
                call["connections"] += 1
                call["frames"] += attrs.get("minivoice.media.frames", 0)
                call["errors"] = call.get("errors", 0) + attrs.get("minivoice.errors", 0)
                stopped = "minivoice.stop.reason" in attrs or any(e["name"] == "stop" for e in row["events"])
                code = attrs.get("minivoice.close.code", 1006)
                if not stopped and not (code == 1000 and attrs.get("minivoice.closed_by") == "platform"):
                    call["dropped"] = attrs
                call["connected_at"] = min(call.get("connected_at", row["start_ns"]), row["start_ns"])
                call["disconnected_at"] = max(call.get("disconnected_at", row["end_ns"]), row["end_ns"])
            elif source == "webhook":
                event = attrs.get("minivoice.event")
                call["webhooks"][event] += 1
                if event == "call.completed":
                    call["completed"] = attrs
    results = []
    for call_id, call in calls.items():
        completed = call.get("completed")
        if "answer_ok" not in call and "answer_failed" in call:
            verdict = "answer_url_failed"
        elif "answer_ok" in call and not call["answer_ok"].get("minivoice.action.valid", False):
            problems = call["answer_ok"].get("minivoice.action.problems", [])
            verdict = "no_stream" if problems == ["no_actions"] else "invalid_action"
        elif "answer_ok" in call and call["connections"] == 0 and completed:
            verdict = "stream_not_connected"
        elif call["connections"] and call["frames"] == 0:
            verdict = "no_media"
        elif "dropped" in call:
            verdict = "stream_dropped"
        elif call.get("errors"):
            verdict = "receiver_error"
        elif completed is None:
            verdict = "webhook_missing"
        elif completed.get("minivoice.call.status") in ("failed", "busy", "no-answer", "canceled"):
            verdict = "call_failed"
        else:
            verdict = "ok"
        duplicates = sum(n - 1 for n in call["webhooks"].values() if n > 1)
        results.append({"call_id": call_id, "verdict": verdict, "duplicate_webhooks": duplicates})
    pq.write_table(pa.Table.from_pylist(results), out)
    return spans, len(results)


# ---- measuring -------------------------------------------------------------------------------


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _child(args: list[str], cpu: list[float] | None = None) -> tuple[float, str]:
    started, cpu_before = time.perf_counter(), _cpu_children()
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(_cpu_children() - cpu_before)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout


def _median(values: list[float]) -> float:
    return statistics.median(values)


def run(
    n_calls: int, repeat: int, naive_calls: int | None, keep: Path | None, *, promoted: bool, batch: int
) -> None:
    """Generate, then measure build, floor, naive script and incremental updates; print the figures."""
    root = keep or Path(tempfile.mkdtemp(prefix="callscope-bench-"))
    data = DataDir(root / "data", fsync=False)
    python = sys.executable
    try:
        if not data.has_segments():
            started = time.perf_counter()
            spans = generate(data, n_calls, promoted=promoted)
            print(f"generated {spans:,} spans for {n_calls:,} calls in {time.perf_counter() - started:.1f} s")
        # The spans to build from (not the pipeline's own root span segments of earlier runs).
        files = [str(s.path) for s in data.segments() if not s.path.name.startswith("root-")]
        spans = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        size = sum(Path(f).stat().st_size for f in files)
        print(
            f"data: {spans:,} spans, {len(files)} segments, {size / 1e6:.0f} MB (promoted column: {promoted})"
        )

        # 1. the build, in a child process: wall time and peak RSS. The first one starts from no
        #    state and emits every call's root span (a first build over a backlog); the others
        #    rebuild everything but find the root spans already emitted (the median's runs).
        from pipeline.timeline import remove_state

        remove_state(data)
        for segment in data.segments():
            if segment.path.name.startswith("root-"):
                segment.path.unlink()
        load_before = os.getloadavg()
        command = [python, "-m", "callscope", "build", "--data", str(data.path), "--full"]
        first_cpu: list[float] = []
        first_time, first_output = _child(command, first_cpu)
        print(first_output.strip())
        build_times: list[float] = []
        build_cpu: list[float] = []
        for _ in range(repeat):
            elapsed, _ = _child(command, build_cpu)
            build_times.append(elapsed)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        # 2. the floor, in a child process too (same interpreter start-up), and in-process
        floor = floor_sql(files, promoted=promoted)
        floor_code = f"import duckdb; duckdb.connect().sql({floor!r}).fetchall()"
        floor_cpu: list[float] = []
        floor_times = [_child([python, "-c", floor_code], floor_cpu)[0] for _ in range(repeat)]
        with duckdb.connect() as con:
            in_process = []
            for _ in range(repeat):
                started = time.perf_counter()
                con.sql(floor).fetchall()
                in_process.append(time.perf_counter() - started)

        # 3. the straightforward script, on a subset when asked (it is linear in spans)
        subset = files
        if naive_calls is not None and naive_calls < n_calls:
            subset = files[: max(1, round(len(files) * naive_calls / n_calls))]
        subset_spans = sum(pq.ParquetFile(f).metadata.num_rows for f in subset)
        started = time.perf_counter()
        naive(subset, root / "naive.parquet")
        naive_time = (time.perf_counter() - started) * spans / subset_spans

        # 4. incremental: ~10k new spans over the built calls
        from pipeline.timeline import Timeline

        step_times, step_spans = [], []
        with Timeline(data) as timeline:
            timeline.step()  # open the state
            salt = int(time.time()) % 100_000  # new spans each run, even over a kept data dir
            for i in range(repeat):
                write_segments(data, late_batch(n_calls, batch, salt + i, promoted=promoted))
                started = time.perf_counter()
                summary = timeline.step()
                step_times.append(time.perf_counter() - started)
                step_spans.append(summary.spans)
        write_segments(data, late_batch(n_calls, batch, salt + repeat, promoted=promoted))
        oneshot, _ = _child([python, "-m", "callscope", "build", "--data", str(data.path), "-q"])

        build = _median(build_times)
        floor_child = _median(floor_times)
        print()
        print(
            f"first build (no state; emits {n_calls:,} root spans), child process: {first_time:.2f} s, "
            f"CPU {first_cpu[0]:.1f} s"
        )
        print(
            f"build (callscope build --full, child process) median of {repeat}: {build:.2f} s "
            f"[{', '.join(f'{t:.2f}' for t in build_times)}]"
        )
        print(
            f"load average before the builds {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
            f"({os.cpu_count()} cores)"
        )
        print(f"peak RSS of the child processes: {peak_rss_mb:,.0f} MB")
        print(
            f"CPU time (user+sys, all threads), medians: build {_median(build_cpu):.1f} s, "
            f"floor {_median(floor_cpu):.1f} s; ratio {_median(build_cpu) / _median(floor_cpu):.2f}x "
            f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        print(
            f"floor (DuckDB scan + GROUP BY call_id, same columns): child {floor_child:.2f} s, "
            f"in-process {_median(in_process):.2f} s"
        )
        naive_note = "" if subset is files else f" (measured on {subset_spans:,} spans, scaled)"
        print(f"straightforward Python script: {naive_time:.1f} s{naive_note}")
        print(
            f"incremental step (--follow, in-process) of ~{batch:,} spans: "
            f"median {_median(step_times):.3f} s "
            f"[{', '.join(f'{t:.3f}' for t in step_times)}], spans applied {step_spans}"
        )
        print(f"incremental one-shot `callscope build` (child process, with start-up): {oneshot:.2f} s")
        print()
        print("targets (issue 4):")
        print(f"  1M calls <= 10 s: {build:.2f} s for {n_calls:,} calls")
        print(f"  peak RSS <= 2 GB: {peak_rss_mb:,.0f} MB")
        print(
            f"  <= 3x the floor: {build / floor_child:.2f}x (child vs child), "
            f"{build / _median(in_process):.2f}x (vs in-process query)"
        )
        print(f"  >= 30x faster than the straightforward script: {naive_time / build:.1f}x")
        print(f"  incremental 10k spans <= 0.5 s: {_median(step_times):.3f} s")
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median reported)")
    parser.add_argument(
        "--naive-calls", type=int, default=None, help="calls for the naive script (default: all)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the data dir here")
    parser.add_argument(
        "--json-only",
        action="store_true",
        help="segments without the promoted `minivoice` column (today's ingest): JSON parsed at build",
    )
    parser.add_argument("--batch", type=int, default=10_000, help="spans per incremental update")
    args = parser.parse_args()
    run(args.calls, args.repeat, args.naive_calls, args.keep, promoted=not args.json_only, batch=args.batch)


if __name__ == "__main__":
    main()
