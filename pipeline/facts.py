"""Per-call facts: span rows reduced to mergeable aggregates, one row per call.

Pure SQL builders, no I/O: callers run them in DuckDB over any relation in SPAN_SCHEMA (Parquet
segments, an Arrow table, a batch of new spans).

Two steps:

1. `span_rows_sql` projects each span to the typed values the rules need (`mv`, the
   `minivoice` struct of `pipeline.schema.MINIVOICE_FIELDS`, read from the promoted column when a
   segment has it and parsed from the `attributes` JSON otherwise), plus what the receiver's span
   events say (first media, stop, errors). Spans the pipeline emitted itself are left out.
2. `call_facts_sql` groups span rows by call id into facts. Every fact is a mergeable aggregate
   (count, sum, min, max, bool_or; "first/last by time" as min/max of a struct whose first fields
   are the time and the span key), so facts of two batches merge into the facts of their union
   (`merge_facts_sql`) and the result never depends on the order spans arrived in.

Facts do not know what time it is; verdicts (`pipeline.verdicts`) derive from facts plus `as_of`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from pipeline.schema import MINIVOICE_COLUMN, MINIVOICE_FIELDS

ANSWER_URL = "answer_url"
RECEIVER = "receiver"
WEBHOOK = "webhook"
PIPELINE = "pipeline"
#: Webhook events counted one by one (others are counted together, see `wh_other_events`).
KNOWN_EVENTS = ("call.initiated", "call.ringing", "call.answered", "call.completed")


def duckdb_type(arrow_type: pa.DataType) -> str:
    """DuckDB SQL type of the Arrow types used in MINIVOICE_FIELDS."""
    if pa.types.is_list(arrow_type):
        return duckdb_type(arrow_type.value_type) + "[]"
    names = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
    return names[arrow_type]


MV_TYPE = "STRUCT(" + ", ".join(f"{name} {duckdb_type(t)}" for name, _, t in MINIVOICE_FIELDS) + ")"
"""The DuckDB type of the `mv` column of span rows (the `minivoice` struct)."""


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_spec() -> str:
    spec = {
        attribute: (["VARCHAR"] if pa.types.is_list(t) else duckdb_type(t))
        for _, attribute, t in MINIVOICE_FIELDS
    }
    return _sql_string(json.dumps(spec))


def minivoice_from_json_sql(attributes: str = "attributes") -> str:
    """SQL: the `minivoice` struct parsed from the JSON attributes (lenient: a bad value is null)."""
    parsed = f"json_transform({attributes}, {_json_spec()})"
    fields = ", ".join(
        f"{name} := struct_extract(j, {_sql_string(attribute)})" for name, attribute, _ in MINIVOICE_FIELDS
    )
    # A lambda-free way to name the parsed struct once: a one-element list transform.
    return f"list_transform([{parsed}], lambda j: struct_pack({fields}))[1]"


def minivoice_sql(has_column: bool) -> str:
    """SQL for the typed `minivoice` struct of a span row.

    With the promoted column (`has_column`), rows that have it use it and only rows without it
    (older segments, read with union_by_name) parse JSON: CASE evaluates each branch only for the
    rows that take it.
    """
    parsed = f"CAST({minivoice_from_json_sql()} AS {MV_TYPE})"
    if not has_column:
        return parsed
    typed = f"CAST({MINIVOICE_COLUMN} AS {MV_TYPE})"
    return f"CASE WHEN {MINIVOICE_COLUMN} IS NOT NULL THEN {typed} ELSE {parsed} END"


def _event_times(name: str, agg: str) -> str:
    return (
        f"list_{agg}(list_transform(list_filter(events, lambda e: e.name = '{name}'), lambda e: e.time_ns))"
    )


FIRST_ERROR_SQL = (
    "list_sort(list_transform(list_filter(events, lambda e: e.name = 'error'), lambda e: {"
    "'t': e.time_ns, "
    "'type': coalesce(json_extract_string(e.attributes, '$.\"error.type\"'), 'error'), "
    "'message': json_extract_string(e.attributes, '$.\"error.message\"')}))[1]"
)


def span_rows_sql(source: str, *, has_minivoice_column: bool = False) -> str:
    """SQL: one typed row per span of `source` (a relation in SPAN_SCHEMA), pipeline spans excluded.

    `span_key` is a 64-bit hash of (trace_id, span_id): OTLP retries store a span twice, and the
    key lets the timeline count it once.
    """
    return f"""
SELECT call_id, source, name, span_id, trace_id, hash(trace_id, span_id) AS span_key,
       start_ns, end_ns, status_code, status_message, service_name, ingested_at_ns, events,
       {minivoice_sql(has_minivoice_column)} AS mv,
       {_event_times("first_media", "min")} AS ev_first_media_ns,
       {_event_times("stop", "max")} AS ev_stop_ns,
       len(list_filter(events, lambda e: e.name = 'error')) AS ev_errors,
       {FIRST_ERROR_SQL} AS ev_first_error
FROM {source}
WHERE source IS DISTINCT FROM '{PIPELINE}'
"""


@dataclass(frozen=True, slots=True)
class FactsConfig:
    """The only configuration facts depend on (a change means rebuilding facts from spans)."""

    answer_url_timeout_ms: int = 5000


@dataclass(frozen=True, slots=True)
class Fact:
    """One per-call fact: its aggregate over span rows, and how two facts rows of a call merge."""

    name: str
    over_spans: str
    merge: str


def _conditions(config: FactsConfig) -> dict[str, str]:
    au = f"source = '{ANSWER_URL}'"
    rx = f"source = '{RECEIVER}'"
    wh = f"source = '{WEBHOOK}'"
    latency = "coalesce(mv.latency_ms, (end_ns - start_ns) / 1e6)"
    is_json = "coalesce(mv.response_json, NOT list_contains(coalesce(mv.action_problems, []), 'not_json'))"
    au_ok = (
        f"{au} AND mv.http_status_code BETWEEN 200 AND 299 AND {is_json} "
        f"AND {latency} <= {config.answer_url_timeout_ms}"
    )
    stopped = "(mv.stop_reason IS NOT NULL OR ev_stop_ns IS NOT NULL)"
    # A connection ends well only with MiniVoice's stop; without one, anything but the platform's
    # own 1000 close (the receiver closing, a network drop, another code) is a dropped stream.
    dropped = (
        f"{rx} AND NOT {stopped} AND NOT (coalesce(mv.close_code, 1006) = 1000 "
        f"AND coalesce(mv.closed_by, 'platform') = 'platform')"
    )
    return {
        "AU": au,
        "RX": rx,
        "WH": wh,
        "WH_EVENT": f"{wh} AND mv.event IS NOT NULL AND mv.webhook_error IS NULL",
        "AU_OK": au_ok,
        "AU_FAILED": f"{au} AND NOT ({au_ok})",
        "DROPPED": dropped,
        "LATENCY": latency,
        "IS_JSON": is_json,
        "STOPPED": stopped,
        "CREATED": "coalesce(mv.created_at_ns, start_ns)",
    }


def facts(config: FactsConfig) -> list[Fact]:
    """The per-call facts, in the MiniVoice debug order of the sources they come from."""
    c = _conditions(config)
    au, rx, wh = c["AU"], c["RX"], c["WH"]
    not_rx = f"NOT ({rx})"
    wh_event = c["WH_EVENT"]

    def count(name: str, where: str) -> Fact:
        # sum() of BIGINT is HUGEINT in DuckDB: keep counts BIGINT through merges.
        return Fact(name, f"count(*) FILTER (WHERE {where})", f"CAST(sum({name}) AS BIGINT)")

    def agg(name: str, fn: str, expr: str, where: str | None = None) -> Fact:
        filtered = f" FILTER (WHERE {where})" if where else ""
        if fn == "sum":
            return Fact(name, f"CAST(sum({expr}){filtered} AS BIGINT)", f"CAST(sum({name}) AS BIGINT)")
        return Fact(name, f"{fn}({expr}){filtered}", f"{fn}({name})")

    return [
        # the call as a whole
        count("span_count", "true"),
        Fact("span_keys", "list(span_key)", "flatten(list(span_keys))"),
        agg("first_ns", "min", f"least(start_ns, {c['CREATED']})", not_rx),
        agg("last_ns", "max", f"greatest(end_ns, {c['CREATED']})", not_rx),
        agg("last_ingested_ns", "max", "ingested_at_ns"),
        agg("customer_id", "max", "mv.customer_id"),
        agg("application_id", "max", "mv.application_id"),
        agg("direction", "max", "mv.direction"),
        agg("from_masked", "max", "mv.from_masked"),
        agg("to_masked", "max", "mv.to_masked"),
        agg("from_hash", "max", "mv.from_hash"),
        agg("to_hash", "max", "mv.to_hash"),
        agg("au_service", "max", "service_name", au),
        agg("rx_service", "max", "service_name", rx),
        agg("wh_service", "max", "service_name", wh),
        # 1. answer_url: the first request that MiniVoice could use, and the last that failed
        count("au_requests", au),
        count("au_failures", c["AU_FAILED"]),
        agg("au_first_end_ns", "min", "end_ns", au),
        agg(
            "au_first_ok",
            "min",
            "{'t': start_ns, 'k': span_key, 'end_ns': end_ns, 'status': mv.http_status_code, "
            f"'latency_ms': {c['LATENCY']}, 'valid': mv.action_valid, 'types': mv.action_types, "
            "'problems': mv.action_problems, 'messages': mv.action_problem_messages, "
            "'stream_url': mv.stream_url, 'track': mv.track, 'body': mv.response_body}",
            c["AU_OK"],
        ),
        agg(
            "au_last_failed",
            "max",
            "{'t': start_ns, 'k': span_key, 'end_ns': end_ns, 'status': mv.http_status_code, "
            f"'latency_ms': {c['LATENCY']}, 'is_json': {c['IS_JSON']}, 'body': mv.response_body, "
            "'error_type': mv.error_type, 'method': mv.http_method, 'path': mv.url_path, "
            "'status_message': status_message}",
            c["AU_FAILED"],
        ),
        # 2.-3. the stream receiver: connections, media, how they ended
        count("rx_connections", rx),
        count("rx_dropped", c["DROPPED"]),
        agg("rx_first_ns", "min", "start_ns", rx),
        agg("rx_last_ns", "max", "end_ns", rx),
        agg(
            "rx_first_media_ns",
            "min",
            "coalesce(mv.media_first_at_ns, ev_first_media_ns, "
            "CASE WHEN mv.media_frames > 0 THEN start_ns END)",
            rx,
        ),
        agg(
            "rx_last_media_ns",
            "max",
            "coalesce(mv.media_last_at_ns, CASE WHEN mv.media_frames > 0 THEN end_ns END)",
            rx,
        ),
        agg("media_frames", "sum", "coalesce(mv.media_frames, 0)", rx),
        agg("media_gap_max_ms", "max", "mv.media_gap_max_ms", rx),
        agg("rx_errors", "sum", "greatest(coalesce(mv.errors, 0), ev_errors)", rx),
        agg("rx_first_error", "min", "ev_first_error", rx),
        agg(
            "rx_first_drop",
            "min",
            "{'t': end_ns, 'k': span_key, 'start_ns': start_ns, 'code': mv.close_code, "
            "'closed_by': mv.closed_by, 'reason': mv.close_reason, 'stream_id': mv.stream_id, "
            "'frames': mv.media_frames}",
            c["DROPPED"],
        ),
        agg(
            "rx_last",
            "max",
            "{'t': end_ns, 'k': span_key, 'start_ns': start_ns, 'code': mv.close_code, "
            "'closed_by': mv.closed_by, 'reason': mv.close_reason, 'stop_reason': mv.stop_reason, "
            f"'stopped': {c['STOPPED']}, 'stream_id': mv.stream_id}}",
            rx,
        ),
        # 4. webhooks: the lifecycle, with completion as the source of truth
        count("wh_deliveries", wh_event),
        count("wh_malformed", f"{wh} AND NOT ({wh_event})"),
        *[
            count(f"wh_{event.split('.')[1]}_n", f"{wh_event} AND mv.event = '{event}'")
            for event in KNOWN_EVENTS
        ],
        count("wh_other_n", f"{wh_event} AND mv.event NOT IN {KNOWN_EVENTS!r}"),
        Fact(
            "wh_other_events",
            f"list_distinct(list(mv.event) FILTER (WHERE {wh_event} AND mv.event NOT IN {KNOWN_EVENTS!r}))",
            "list_distinct(flatten(list(wh_other_events)))",
        ),
        agg(
            "completed",
            "min",
            f"{{'t': {c['CREATED']}, 'k': span_key, 'status': mv.call_status, 'received_ns': start_ns}}",
            f"{wh_event} AND mv.event = 'call.completed'",
        ),
        agg(
            "wh_latest",
            "max",
            f"{{'t': {c['CREATED']}, 'k': span_key, 'status': mv.call_status, 'event': mv.event}}",
            f"{wh_event} AND mv.call_status IS NOT NULL",
        ),
    ]


def call_facts_sql(span_rows: str, config: FactsConfig) -> str:
    """SQL: one facts row per call id (spans without a call id are left out: see unattributed)."""
    columns = ",\n       ".join(f"{f.over_spans} AS {f.name}" for f in facts(config))
    return f"SELECT call_id,\n       {columns}\nFROM {span_rows}\nWHERE call_id IS NOT NULL\nGROUP BY call_id"


def merge_facts_sql(facts_rows: str, config: FactsConfig) -> str:
    """SQL: merge several facts rows of the same call (e.g. stored facts + a new batch's) into one."""
    columns = ",\n       ".join(f"{f.merge} AS {f.name}" for f in facts(config))
    return f"SELECT call_id,\n       {columns}\nFROM {facts_rows}\nGROUP BY call_id"


def fact_names(config: FactsConfig | None = None) -> list[str]:
    """Names of the facts columns (after `call_id`)."""
    return [f.name for f in facts(config or FactsConfig())]
