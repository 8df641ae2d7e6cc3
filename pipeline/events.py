"""Timeline points (`call_events`): what each log said about a call, when, in words.

Pure SQL builders over stored span rows (SPAN_SCHEMA). Points are not written by the build: the
`call_events` view (`pipeline.tables`) derives them from the spans of the call asked for, so a
build never formats ten million points that nobody reads, and a point shows up as soon as its span
is stored. A one-call lookup (`WHERE call_id = ?`) reads only that call's spans: the call id
filter goes below the de-duplication (partitioned by call id) into the Parquet scan, and callers
that know when the call happened (`pipeline.queries.call_timeline`) also prune row groups by time.

Each point keeps the time on the clock that recorded it (`recorded_at`); the view moves receiver
times onto the webhook clock by the call's estimated skew and adds the pipeline's own points (the
verdict, a detected clock skew).

Points per span:

- answer_url: one point at the request: method, path, status, latency and what the action said;
- receiver: `connection_open`, then each span event (`connected`, `start`, `first_media`,
  `stop`, `error`, ...), then `connection_closed` with the close code, who closed and the totals;
- webhook: one point per delivery, named by its event (`call.completed`, ...), at its
  `created_at` (MiniVoice's clock), with the status and the delivery delay.

The values come from the `attributes` JSON (the source of truth, present in every segment), parsed
only for the spans a query reads.
"""

from __future__ import annotations

import json

from pipeline.rules import close_description
from pipeline.tables import SPAN_COPY_ORDER

#: The span attributes the points read: (name in `mv`, attribute, DuckDB type).
POINT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("event", "minivoice.event", "VARCHAR"),
    ("call_status", "minivoice.call.status", "VARCHAR"),
    ("http_method", "http.request.method", "VARCHAR"),
    ("url_path", "url.path", "VARCHAR"),
    ("http_status_code", "http.response.status_code", "BIGINT"),
    ("error_type", "error.type", "VARCHAR"),
    ("latency_ms", "minivoice.answer_url.latency_ms", "DOUBLE"),
    ("response_json", "minivoice.answer_url.response_json", "BOOLEAN"),
    ("action_types", "minivoice.action.types", "VARCHAR[]"),
    ("action_valid", "minivoice.action.valid", "BOOLEAN"),
    ("action_problems", "minivoice.action.problems", "VARCHAR[]"),
    ("stream_url", "minivoice.stream_url", "VARCHAR"),
    ("track", "minivoice.track", "VARCHAR"),
    ("stream_id", "minivoice.stream_id", "VARCHAR"),
    ("media_frames", "minivoice.media.frames", "BIGINT"),
    ("media_gap_max_ms", "minivoice.media.gap_max_ms", "BIGINT"),
    ("stop_reason", "minivoice.stop.reason", "VARCHAR"),
    ("close_code", "minivoice.close.code", "BIGINT"),
    ("close_reason", "minivoice.close.reason", "VARCHAR"),
    ("closed_by", "minivoice.closed_by", "VARCHAR"),
    ("errors", "minivoice.errors", "BIGINT"),
    ("created_at_ns", "minivoice.webhook.created_at_unix_nano", "BIGINT"),
    ("webhook_error", "minivoice.webhook.error", "VARCHAR"),
)

POINT_SOURCES = ("answer_url", "receiver", "webhook")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def point_fields_sql(attributes: str = "attributes") -> str:
    """SQL: the struct of POINT_FIELDS parsed from the JSON attributes (a bad value is null)."""
    spec = {attribute: (["VARCHAR"] if t == "VARCHAR[]" else t) for _, attribute, t in POINT_FIELDS}
    parsed = f"json_transform({attributes}, {_sql_string(json.dumps(spec))})"
    fields = ", ".join(
        f"{name} := CAST(struct_extract(j, {_sql_string(attribute)}) AS {t})"
        for name, attribute, t in POINT_FIELDS
    )
    return f"list_transform([{parsed}], lambda j: struct_pack({fields}))[1]"


_EVENT_ATTRIBUTE = "json_extract_string(e.attributes, '$.\"{key}\"')"


def _attr(key: str) -> str:
    return _EVENT_ATTRIBUTE.format(key=key)


def _answer_url_detail() -> str:
    # No judgement of lateness here (the timeout is the build's configuration; the verdict point
    # says it): the point states what happened.
    latency = "coalesce(mv.latency_ms, (end_ns - start_ns) / 1e6)"
    is_json = "coalesce(mv.response_json, NOT list_contains(coalesce(mv.action_problems, []), 'not_json'))"
    outcome = (
        "CASE WHEN mv.http_status_code IS NULL "
        "THEN 'no response' || coalesce(' (' || mv.error_type || ')', '') "
        "WHEN mv.http_status_code NOT BETWEEN 200 AND 299 THEN 'not a 2xx answer' "
        f"WHEN NOT {is_json} THEN 'the body is not JSON' "
        "WHEN coalesce(mv.action_valid, false) "
        "AND list_contains(coalesce(mv.action_types, []), 'start_stream') "
        "THEN 'start_stream ' || coalesce(mv.stream_url, '?') || coalesce(' track ' || mv.track, '') "
        "WHEN coalesce(mv.action_valid, false) "
        "THEN 'actions: ' || array_to_string(coalesce(mv.action_types, []), ', ') "
        "WHEN mv.action_problems = ['no_actions'] THEN 'no actions' "
        "ELSE 'invalid action: ' || array_to_string(coalesce(mv.action_problems, ['?']), ', ') END"
    )
    return (
        "concat(coalesce(mv.http_method, 'POST'), ' ', coalesce(mv.url_path, 'answer_url'), ' -> ', "
        "coalesce('HTTP ' || mv.http_status_code, 'no HTTP status'), "
        f"printf(' in %.0f ms: ', {latency}), {outcome})"
    )


_RECEIVER_EVENT_DETAIL = (
    "CASE e.name "
    f"WHEN 'connected' THEN concat('protocol ', coalesce({_attr('minivoice.protocol')}, '?'), "
    f"coalesce(' v' || {_attr('minivoice.protocol_version')}, '')) "
    f"WHEN 'start' THEN concat('stream ', coalesce({_attr('minivoice.stream_id')}, '?'), "
    "coalesce(', tracks ' || array_to_string(CAST("
    "json_extract(e.attributes, '$.\"minivoice.stream.tracks\"') "
    "AS VARCHAR[]), ','), ''), "
    f"coalesce(', ' || {_attr('minivoice.media.encoding')}, ''), "
    f"coalesce(' ' || {_attr('minivoice.media.sample_rate')} || ' Hz', '')) "
    f"WHEN 'first_media' THEN concat('first media frame', coalesce(' (' || {_attr('minivoice.media.track')} "
    "|| ' track)', '')) "
    f"WHEN 'stop' THEN concat('stop', coalesce(' (' || {_attr('minivoice.stop.reason')} || ')', '')) "
    f"WHEN 'error' THEN concat(coalesce({_attr('error.type')}, 'error'), "
    f"coalesce(': ' || {_attr('error.message')}, '')) "
    "ELSE e.attributes END"
)


def _point(ns: str, event: str, detail: str, ord_: str) -> str:
    return f"{{'ns': {ns}, 'event': {event}, 'detail': {detail}, 'ord': CAST({ord_} AS SMALLINT)}}"


def call_points_sql(spans: str, *, where: str = "true") -> str:
    """SQL: the points (call_id, recorded_at, source, event, detail, span_id, ord) of the spans of
    `spans` (a relation of stored span rows, e.g. `spans_raw`) that have a call id; one copy of
    each span (the `spans` view's rule). `where` filters the raw rows first (a call id, a time
    window: both reach the Parquet scan)."""
    stopped = "mv.stop_reason IS NOT NULL OR list_contains(list_transform(events, lambda e: e.name), 'stop')"
    closed = (
        "concat("
        + close_description("mv.close_code", "mv.closed_by", "mv.close_reason")
        + f", CASE WHEN {stopped} THEN ' after stop' ELSE ', without a stop' END, "
        "printf('; %d media frames', coalesce(mv.media_frames, 0)), "
        "coalesce(printf(', largest gap %d ms', mv.media_gap_max_ms), ''), "
        "CASE WHEN coalesce(mv.errors, 0) > 0 THEN printf(', %d error(s)', mv.errors) ELSE '' END)"
    )
    webhook = _point(
        "coalesce(mv.created_at_ns, start_ns)",
        "coalesce(mv.event, 'webhook')",
        "concat(coalesce('status ' || mv.call_status, 'no status'), "
        "CASE WHEN mv.created_at_ns IS NOT NULL "
        "THEN printf('; delivered %.0f ms after created_at', (start_ns - mv.created_at_ns) / 1e6) "
        "ELSE '' END, "
        "coalesce('; malformed delivery: ' || mv.webhook_error, ''))",
        "0",
    )
    # Two-argument list_concat, nested: the variadic form needs DuckDB 1.3, and `duckdb` shells
    # from 1.1 on read these views.
    receiver = (
        "list_concat(["
        + _point(
            "start_ns",
            "'connection_open'",
            "concat('WebSocket connection accepted', coalesce(' (stream ' || mv.stream_id || ')', ''))",
            "0",
        )
        + "], list_concat(list_transform(coalesce(events, []), lambda e, i: "
        + _point("e.time_ns", "e.name", _RECEIVER_EVENT_DETAIL, "i")
        + "), ["
        + _point("end_ns", "'connection_closed'", closed, "10000")
        + "]))"
    )
    answer_url = _point("start_ns", "'answer_url'", _answer_url_detail(), "0")
    points = (
        f"CASE source WHEN 'answer_url' THEN [{answer_url}] WHEN 'receiver' THEN {receiver} "
        f"ELSE [{webhook}] END"
    )
    sources = ", ".join(f"'{s}'" for s in POINT_SOURCES)
    return f"""
SELECT call_id, CAST(make_timestamp(p.ns // 1000) AS TIMESTAMPTZ) AS recorded_at, source,
       p.event AS event, p.detail AS detail, span_id, p.ord AS ord
FROM (
    SELECT call_id, source, span_id, unnest({points}) AS p
    FROM (
        SELECT call_id, source, span_id, start_ns, end_ns, events, {point_fields_sql()} AS mv
        FROM {spans}
        WHERE call_id IS NOT NULL AND source IN ({sources}) AND ({where})
        -- Partitioned by call id too, so that a call id filter on the view reaches the scan.
        QUALIFY row_number() OVER (PARTITION BY call_id, trace_id, span_id ORDER BY {SPAN_COPY_ORDER}) = 1
    )
)
"""
