"""Timeline points (`call_events` rows) from span rows: what each log said, when, in words.

Pure SQL builder over span rows (`pipeline.facts.span_rows_sql`). Each row keeps the time on
the clock that recorded it (`recorded_at`); the `call_events` view (`pipeline.tables`) moves
receiver times onto the webhook clock by the call's estimated skew and adds the pipeline's own
points (the verdict, a detected clock skew).

Points per span:

- answer_url: one point at the request: method, path, status, latency and what the action said;
- receiver: `connection_open`, then each span event (`connected`, `start`, `first_media`,
  `stop`, `error`, ...), then `connection_closed` with the close code, who closed and the totals;
- webhook: one point per delivery, named by its event (`call.completed`, ...), at its
  `created_at` (MiniVoice's clock), with the status and the delivery delay.
"""

from __future__ import annotations

from pipeline.rules import RulesConfig, close_description

_EVENT_ATTRIBUTE = "json_extract_string(e.attributes, '$.\"{key}\"')"


def _attr(key: str) -> str:
    return _EVENT_ATTRIBUTE.format(key=key)


def _answer_url_detail(config: RulesConfig) -> str:
    timeout = config.answer_url_timeout_ms
    latency = "coalesce(mv.latency_ms, (end_ns - start_ns) / 1e6)"
    is_json = "coalesce(mv.response_json, NOT list_contains(coalesce(mv.action_problems, []), 'not_json'))"
    outcome = (
        "CASE WHEN mv.http_status_code IS NULL "
        "THEN 'no response' || coalesce(' (' || mv.error_type || ')', '') "
        f"WHEN {latency} > {timeout} THEN 'too late: MiniVoice waits {timeout} ms' "
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


def call_events_sql(span_rows: str, config: RulesConfig) -> str:
    """SQL: the stored `call_events` columns (call_id, recorded_at, source, event, detail, span_id,
    ord) for the span rows of `span_rows` that have a call id."""
    closed = (
        "concat("
        + close_description("mv.close_code", "mv.closed_by", "mv.close_reason")
        + ", CASE WHEN mv.stop_reason IS NOT NULL OR ev_stop_ns IS NOT NULL THEN ' after stop' "
        "ELSE ', without a stop' END, "
        "printf('; %d media frames', coalesce(mv.media_frames, 0)), "
        "coalesce(printf(', largest gap %d ms', mv.media_gap_max_ms), ''), "
        "CASE WHEN coalesce(mv.errors, 0) > 0 THEN printf(', %d error(s)', mv.errors) ELSE '' END)"
    )
    ts = "CAST(make_timestamp(({ns}) // 1000) AS TIMESTAMPTZ)"
    return f"""
SELECT call_id, {ts.format(ns="start_ns")} AS recorded_at, 'answer_url' AS source, 'answer_url' AS event,
       {_answer_url_detail(config)} AS detail, span_id, CAST(0 AS SMALLINT) AS ord
FROM {span_rows} WHERE source = 'answer_url' AND call_id IS NOT NULL
UNION ALL
SELECT call_id, {ts.format(ns="start_ns")}, 'receiver', 'connection_open',
       concat('WebSocket connection accepted', coalesce(' (stream ' || mv.stream_id || ')', '')), span_id,
       CAST(0 AS SMALLINT)
FROM {span_rows} WHERE source = 'receiver' AND call_id IS NOT NULL
UNION ALL
SELECT call_id, {ts.format(ns="e.time_ns")}, 'receiver', e.name, {_RECEIVER_EVENT_DETAIL}, span_id,
       CAST(i AS SMALLINT)
FROM (SELECT call_id, span_id, unnest(events) AS e, generate_subscripts(events, 1) AS i
      FROM {span_rows} WHERE source = 'receiver' AND call_id IS NOT NULL AND len(events) > 0)
UNION ALL
SELECT call_id, {ts.format(ns="end_ns")}, 'receiver', 'connection_closed', {closed}, span_id,
       CAST(10000 AS SMALLINT)
FROM {span_rows} WHERE source = 'receiver' AND call_id IS NOT NULL
UNION ALL
SELECT call_id, {ts.format(ns="coalesce(mv.created_at_ns, start_ns)")}, 'webhook',
       coalesce(mv.event, 'webhook'),
       concat(coalesce('status ' || mv.call_status, 'no status'),
              CASE WHEN mv.created_at_ns IS NOT NULL
                   THEN printf('; delivered %.0f ms after created_at', (start_ns - mv.created_at_ns) / 1e6)
                   ELSE '' END,
              coalesce('; malformed delivery: ' || mv.webhook_error, '')),
       span_id, CAST(0 AS SMALLINT)
FROM {span_rows} WHERE source = 'webhook' AND call_id IS NOT NULL
"""
