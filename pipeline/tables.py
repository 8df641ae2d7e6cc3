"""The timeline's tables: `calls`, `call_events`, `unattributed_spans`: schemas and view SQL.

Stored layout (written by `pipeline.timeline`, atomically, file by file):

    DIR/calls/base-<seq>.parquet          every call, as of the build that wrote it
    DIR/calls/delta-<seq>.parquet         calls re-evaluated by an incremental step
    DIR/unattributed_spans/...            spans without a call id (same base/delta scheme)

Every `calls` row carries `_version` (the sequence number of the step that wrote it); the
`calls` view keeps the highest version of each call, so a delta supersedes the base without
rewriting it, and a consolidated base (a new, higher version) supersedes both.

`call_events` is not stored: it is a view over the stored spans (`pipeline.events`, the points
each span stands for) and the `calls` view (which moves receiver points onto the webhook clock
by the call's `receiver_clock_skew_ms`, and adds the pipeline's points: the verdict, a detected
skew). A one-call lookup reads only that call's spans; a build writes no points at all.

This module only holds text and schemas (no DuckDB import), so `pipeline.storage` can register
the views for every process that opens the data directory.
"""

from __future__ import annotations

import pyarrow as pa

#: The order in which stored copies of one (trace_id, span_id) compete: the latest ingested copy
#: wins. Retries of an OTLP request are identical (which copy wins does not matter); a span
#: re-emitted on purpose with the same ids, such as the pipeline's `minivoice.call` root span
#: after its verdict changed, must show its latest content. Ties: later end, then content.
#: The `spans` view, compaction and the `call_events` view all use it.
SPAN_COPY_ORDER = "ingested_at_ns DESC, end_ns DESC, name, attributes, events::VARCHAR"

CALLS = "calls"
CALL_EVENTS = "call_events"
UNATTRIBUTED = "unattributed_spans"
VERSION_COLUMN = "_version"

_TS = pa.timestamp("us", tz="UTC")
_STRINGS = pa.list_(pa.string())

CALLS_SCHEMA = pa.schema(
    [
        ("call_id", pa.string()),
        ("trace_id", pa.string()),
        ("verdict", pa.string()),
        ("failure_stage", pa.string()),
        ("reason", pa.string()),
        ("next_step", pa.string()),
        ("is_final", pa.bool_()),
        ("customer_id", pa.string()),
        ("application_id", pa.string()),
        ("direction", pa.string()),
        ("call_status", pa.string()),
        ("first_seen_at", _TS),
        ("last_seen_at", _TS),
        ("answer_url_status", pa.int64()),
        ("answer_url_latency_ms", pa.float64()),
        ("answer_url_requests", pa.int64()),
        ("answer_url_response_body", pa.string()),
        ("action_valid", pa.bool_()),
        ("action_problems", _STRINGS),
        ("stream_url", pa.string()),
        ("track", pa.string()),
        ("connected_at", _TS),
        ("first_media_at", _TS),
        ("last_media_at", _TS),
        ("media_frames", pa.int64()),
        ("media_gap_max_ms", pa.int64()),
        ("disconnected_at", _TS),
        ("close_code", pa.int64()),
        ("closed_by", pa.string()),
        ("close_reason", pa.string()),
        ("stop_reason", pa.string()),
        ("receiver_connections", pa.int64()),
        ("receiver_errors", pa.int64()),
        ("stream_ended_before_call_ms", pa.float64()),
        ("completed_at", _TS),
        ("webhook_count", pa.int64()),
        ("duplicate_webhooks", pa.int64()),
        ("receiver_clock_skew_ms", pa.int64()),
        ("span_count", pa.int64()),
        ("evaluated_at", _TS),
    ]
)
"""The public `calls` columns (the view's; stored files add `_version`)."""

CALL_EVENTS_SCHEMA = pa.schema(
    [
        ("call_id", pa.string()),
        ("ts", _TS),
        ("source", pa.string()),
        ("event", pa.string()),
        ("detail", pa.string()),
        ("recorded_at", _TS),
        ("span_id", pa.string()),
        ("ord", pa.int16()),
    ]
)
"""The `call_events` view: `ts` on the webhook clock (receiver points corrected for skew)."""

CALL_POINTS_SCHEMA = pa.schema([f for f in CALL_EVENTS_SCHEMA if f.name != "ts"])
"""Points as their spans give them (`pipeline.events.call_points_sql`), before the view's clock."""

UNATTRIBUTED_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("source", pa.string()),
        ("name", pa.string()),
        ("service_name", pa.string()),
        ("status_code", pa.string()),
        ("start_at", _TS),
        ("end_at", _TS),
        ("ingested_at", _TS),
    ]
)
"""Spans that arrived without a call id: counted and shown, never silently dropped."""


def calls_view_sql(source: str) -> str:
    """SQL: the latest row (highest `_version`) of each call in `source` (stored calls rows).

    A window partitioned by call_id, so that `WHERE call_id = ?` on the view is pushed below it
    and one call costs one lookup (measured by the dashboard's bench: ~30 ms instead of ~550 ms
    for a semi-join on max(_version) over 1M calls); full scans cost about the same.
    """
    return (
        f"SELECT * EXCLUDE ({VERSION_COLUMN}) FROM {source} "
        f"QUALIFY row_number() OVER (PARTITION BY call_id ORDER BY {VERSION_COLUMN} DESC) = 1"
    )


def call_events_view_sql(points: str, latest_calls: str) -> str:
    """SQL: span points (`points`, in CALL_POINTS_SCHEMA) on one clock, plus the pipeline's points
    from `latest_calls` (one row per call, in CALLS_SCHEMA)."""
    return f"""
SELECT e.call_id,
       CASE WHEN e.source = 'receiver' AND coalesce(c.receiver_clock_skew_ms, 0) <> 0
            THEN e.recorded_at - to_milliseconds(c.receiver_clock_skew_ms) ELSE e.recorded_at END AS ts,
       e.source, e.event, e.detail, e.recorded_at, e.span_id, e.ord
FROM {points} e LEFT JOIN (SELECT call_id, receiver_clock_skew_ms FROM {latest_calls}) c USING (call_id)
UNION ALL
SELECT call_id, connected_at, 'pipeline', 'clock_skew',
       printf('receiver clock is %d ms %s the webhook clock; receiver times in this timeline are corrected',
              abs(receiver_clock_skew_ms),
              CASE WHEN receiver_clock_skew_ms > 0 THEN 'ahead of' ELSE 'behind' END),
       NULL, NULL, CAST(-1 AS SMALLINT)
FROM {latest_calls} WHERE coalesce(receiver_clock_skew_ms, 0) <> 0
UNION ALL
SELECT call_id, greatest(last_seen_at, completed_at), 'pipeline', 'verdict',
       concat(verdict, ' (', failure_stage,
              CASE WHEN is_final THEN ', final' ELSE ', not final yet' END, '): ',
              reason, '. Next: ', next_step),
       NULL, NULL, CAST(32000 AS SMALLINT)
FROM {latest_calls}
"""


def _template(sql: str) -> str:
    """Escape braces for `str.format(glob=...)` (pipeline.storage.TABLE_VIEWS), keeping `{glob}`."""
    return sql.replace("{", "{{").replace("}", "}}").replace("{{glob}}", "{glob}")


_CALLS_FILES = "read_parquet({glob}, union_by_name=true)"

TIMELINE_VIEWS: dict[str, str] = {CALLS: _template(calls_view_sql(_CALLS_FILES))}
"""View templates for `pipeline.storage.TABLE_VIEWS` (`{glob}`: the table's quoted absolute glob)."""

TIMELINE_EMPTY_SCHEMAS: dict[str, pa.Schema] = {
    CALLS: CALLS_SCHEMA,
    UNATTRIBUTED: UNATTRIBUTED_SCHEMA,
}
"""Typed empty views before the first build, so queries on a fresh data dir work."""


def one_call_events_sql(*, windowed: bool) -> str:
    """SQL: the `call_events` rows of one call (named parameter `$call_id`), reading only its
    spans. With `windowed`, only spans that start between `$low_ns` and `$high_ns`, in the date
    partitions `$low_day` to `$high_day`: the Parquet scan then skips every other partition and
    row group (segments are in arrival order), instead of reading every call id stored."""
    from pipeline.events import call_points_sql

    where = "call_id = $call_id"
    if windowed:
        where += " AND start_ns BETWEEN $low_ns AND $high_ns AND date BETWEEN $low_day AND $high_day"
    points = f"({call_points_sql('spans_raw', where=where)})"
    return call_events_view_sql(points, "(SELECT * FROM calls WHERE call_id = $call_id)")


def derived_views() -> dict[str, str]:
    """Views over other views (by name), for `pipeline.storage` to create after the table views:
    `call_events`, over `spans_raw` and `calls` (both always defined, typed and empty at first)."""
    from pipeline.events import call_points_sql

    return {CALL_EVENTS: call_events_view_sql(f"({call_points_sql('spans_raw')})", "calls")}
