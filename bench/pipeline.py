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
import sys
from pathlib import Path

import duckdb
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
# This script is called pipeline.py: keep its own directory off the path so `pipeline` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from pipeline.schema import SPAN_SCHEMA  # noqa: E402

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
    table = con.execute(
        SPANS_SQL,
        {"first": first, "n": n_calls, "day_start": DAY_START_NS, "spacing": spacing_ns},
    ).to_arrow_table()
    return table.cast(SPAN_SCHEMA)


def write_segments(table: pa.Table, data_dir: Path, rows_per_segment: int = 500_000, tag: str = "") -> int:
    """Write `table` as Parquet segments under DIR/spans/date=.../, as ingest would. Returns files written."""
    from pipeline.timeline import write_span_segments

    return write_span_segments(data_dir, table, rows_per_segment=rows_per_segment, tag=tag)


def run(n_calls: int, repeat: int, naive_calls: int | None, keep: Path | None) -> None:
    """Generate, build, measure (written next)."""
    raise SystemExit("bench/pipeline.py: measurement not written yet")


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
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated data dir here")
    args = parser.parse_args()
    run(args.calls, args.repeat, args.naive_calls, args.keep)


if __name__ == "__main__":
    main()
