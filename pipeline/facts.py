"""Per-call facts: span rows reduced to mergeable aggregates, one row per call.

Pure SQL builders, no I/O: callers run them in DuckDB over any relation in SPAN_SCHEMA (Parquet
segments, an Arrow table, a batch of new spans).

Two steps:

1. `span_rows_sql` projects each span to what the rules need: ids, times, and `mv`, the typed
   `minivoice` struct of `pipeline.schema.MINIVOICE_FIELDS` (the promoted column when a segment
   has it, parsed from the `attributes` JSON otherwise). Spans the pipeline emitted itself are
   left out.
2. `call_facts_sql` reduces each source's span rows to one row per call (`GROUPS`: answer_url,
   receiver, webhook, any other source), then joins the sources on the call id. Every fact is a
   mergeable aggregate (count, sum, min, max, bool_or; "first/last by time" as min/max of a
   struct whose first field is the time: structs compare field by field, so two spans that tie on
   time still order the same way every time), so facts of two batches merge into the facts of
   their union (`merge_facts_sql`) and never depend on the order spans arrived in.

What a million calls cost is mostly aggregate state and per-row work, so facts are kept narrow:
counts and times are plain numbers; the few "first/last" picks carry only what a verdict, a reason
or a `calls` column reads; what a receiver's span events say is computed only for the spans whose
typed attributes leave it open (a span without `minivoice.errors`, ...); the call's customer and
application ride in two picks (`who`) instead of being aggregated over every span.

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


def minivoice_sql(mode: str) -> str:
    """SQL for the typed `minivoice` struct of a span row.

    `mode`: "typed" (the promoted column; the JSON is never read), "json" (parsed from the
    attributes), or "mixed" (the column where a row has it, else JSON; CASE evaluates each branch
    only for the rows that take it, but the scan still reads the attributes text).
    """
    parsed = f"CAST({minivoice_from_json_sql()} AS {MV_TYPE})"
    if mode == "json":
        return parsed
    if mode == "typed":
        # No CAST: the scan then reads only the struct fields the query uses.
        return MINIVOICE_COLUMN
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
"""SQL: the receiver span's first `error` event as {t, type, message} (null without one)."""

#: SQL: whether a receiver span saw MiniVoice's `stop`: the typed attribute, else its span events
#: (CASE reads the events only of the spans without the attribute; OR would read them all).
STOPPED_SQL = (
    "CASE WHEN mv.stop_reason IS NOT NULL THEN true "
    "ELSE coalesce(list_contains(list_transform(events, lambda e: e.name), 'stop'), false) END"
)


def span_rows_sql(source: str, *, mode: str = "json") -> str:
    """SQL: one typed row per span of `source` (a relation in SPAN_SCHEMA), pipeline spans excluded.

    `mode` says where the `minivoice` values come from (`minivoice_sql`). `span_key` is a 64-bit
    hash of (trace_id, span_id): OTLP retries store a span twice, and the key lets the timeline
    count it once.
    """
    return f"""
SELECT call_id, source, name, span_id, trace_id, hash(trace_id, span_id) AS span_key,
       start_ns, end_ns, status_code, status_message, service_name, ingested_at_ns, events,
       {minivoice_sql(mode)} AS mv
FROM {source}
WHERE source IS DISTINCT FROM '{PIPELINE}'
"""


def span_rows_from_files_sql(typed_files: list[str], json_files: list[str], where: str = "true") -> str:
    """SQL: span rows of Parquet segments, reading the promoted column from the files that have it
    and parsing JSON only in the others. `where` filters the raw rows (e.g. by ingest time)."""

    def files(paths: list[str]) -> str:
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        return f"(SELECT * FROM read_parquet([{listed}], union_by_name=true) WHERE {where})"

    parts = []
    if typed_files:
        parts.append(span_rows_sql(files(typed_files), mode="typed"))
    if json_files:
        parts.append(span_rows_sql(files(json_files), mode="json"))
    if not parts:
        raise ValueError("no segment files given")
    return "\nUNION ALL\n".join(parts)


@dataclass(frozen=True, slots=True)
class FactsConfig:
    """The only configuration facts depend on (a change means rebuilding facts from spans)."""

    answer_url_timeout_ms: int = 5000


#: Characters of a failed or invalid answer_url response body kept in the facts.
BODY_CHARS = 500
INVALID = "NOT coalesce(mv.action_valid, false)"
OTHER = "other"
EVERY = "*"
#: The groups facts are aggregated in, one per source (plus spans of any other source), so each
#: span only feeds the aggregates of its own source. A fact of group EVERY is computed in each
#: group and combined (`Fact.combine`).
GROUPS = (ANSWER_URL, RECEIVER, WEBHOOK, OTHER)
#: Who the call belongs to, as MiniVoice sent it (the answer_url request and the webhooks carry
#: it), kept in the two picks that read it. Aggregated over every span, or with the phone number
#: fields (masked and keyed hashes, 76 characters each), it cost a third of the facts' CPU
#: (docs/benchmarks.md, "Pipeline"); the numbers stay in the spans.
WHO_SQL = "{'customer_id': mv.customer_id, 'application_id': mv.application_id, 'direction': mv.direction}"


@dataclass(frozen=True, slots=True)
class Fact:
    """One per-call fact: its aggregate over the span rows of its group (a source, or EVERY group),
    how two facts rows of a call merge, its value when the group has no span (counts: 0), and for
    EVERY-group facts how the groups' values combine (`sum`, `greatest`)."""

    name: str
    group: str
    fn: str
    expr: str
    where: str | None
    merge: str
    empty: str | None = None
    combine: str | None = None

    @property
    def over_spans(self) -> str:
        """The aggregate over the group's span rows."""
        filtered = f" FILTER (WHERE {self.where})" if self.where else ""
        if self.fn == "count":
            return f"count(*){filtered}"
        if self.fn == "sum":
            return f"CAST(sum({self.expr}){filtered} AS BIGINT)"
        if self.fn == "list_distinct":
            return f"list_distinct(list({self.expr}){filtered})"
        return f"{self.fn}({self.expr}){filtered}"

    @property
    def over_one_span(self) -> str:
        """The same aggregate over a group of exactly one span row, as a plain expression (no
        aggregate state: for the calls that have one span of the source, most of them)."""
        if self.fn == "count":
            return (
                f"CAST(CASE WHEN {self.where} THEN 1 ELSE 0 END AS BIGINT)"
                if self.where
                else "CAST(1 AS BIGINT)"
            )
        value = f"CAST({self.expr} AS BIGINT)" if self.fn == "sum" else self.expr
        if self.fn == "list_distinct":
            value = f"list_distinct([{self.expr}])"
        return f"CASE WHEN {self.where} THEN {value} END" if self.where else value


def _conditions(config: FactsConfig) -> dict[str, str]:
    latency = "coalesce(mv.latency_ms, (end_ns - start_ns) / 1e6)"
    is_json = "coalesce(mv.response_json, NOT list_contains(coalesce(mv.action_problems, []), 'not_json'))"
    au_ok = (
        f"mv.http_status_code BETWEEN 200 AND 299 AND {is_json} "
        f"AND {latency} <= {config.answer_url_timeout_ms}"
    )
    # A connection ends well only with MiniVoice's stop; without one, anything but the platform's
    # own 1000 close (the receiver closing, a network drop, another code) is a dropped stream.
    dropped = (
        "NOT stopped AND NOT (coalesce(mv.close_code, 1006) = 1000 "
        "AND coalesce(mv.closed_by, 'platform') = 'platform')"
    )
    return {
        "WH_EVENT": "mv.event IS NOT NULL AND mv.webhook_error IS NULL",
        "AU_OK": au_ok,
        "DROPPED": dropped,
        "LATENCY": latency,
        "IS_JSON": is_json,
        "CREATED": "coalesce(mv.created_at_ns, start_ns)",
    }


def _group_columns(group: str, config: FactsConfig) -> str:
    """SQL: the per-row columns a group's facts read more than once (computed once per span)."""
    c = _conditions(config)
    if group == ANSWER_URL:
        return f"{c['AU_OK']} AS ok"
    if group == RECEIVER:
        return f"{STOPPED_SQL} AS stopped"
    if group == WEBHOOK:
        return f"{c['WH_EVENT']} AS delivered, {c['CREATED']} AS created_ns"
    return "true AS _"


def facts(config: FactsConfig) -> list[Fact]:
    """The per-call facts, in the MiniVoice debug order of the sources they come from."""
    c = _conditions(config)

    def count(name: str, group: str, where: str | None = None) -> Fact:
        # sum() of BIGINT is HUGEINT in DuckDB: keep counts BIGINT through merges.
        return Fact(name, group, "count", "*", where, f"CAST(sum({name}) AS BIGINT)", "0", "sum")

    def agg(name: str, group: str, fn: str, expr: str, where: str | None = None) -> Fact:
        if fn == "sum":
            return Fact(name, group, fn, expr, where, f"CAST(sum({name}) AS BIGINT)", "0", "sum")
        combine = {"max": "greatest", "min": "least"}.get(fn)
        return Fact(name, group, fn, expr, where, f"{fn}({name})", None, combine)

    au, rx, wh = ANSWER_URL, RECEIVER, WEBHOOK
    completed = "delivered AND mv.event = 'call.completed'"
    other_event = f"delivered AND mv.event NOT IN {KNOWN_EVENTS!r}"
    return [
        # the call as a whole
        count("span_count", EVERY),
        agg("last_ingested_ns", EVERY, "max", "ingested_at_ns"),
        # 1. answer_url: the first request that MiniVoice could use, and the last that failed
        count("au_requests", au),
        count("au_failures", au, "NOT ok"),
        agg("au_first_ns", au, "min", "start_ns"),
        agg("au_last_ns", au, "max", "end_ns"),
        agg(
            "au_first_ok",
            au,
            "min",
            "{'t': start_ns, 'end_ns': end_ns, 'status': mv.http_status_code, "
            f"'latency_ms': {c['LATENCY']}, 'valid': mv.action_valid, "
            # Compact, as every byte here is stored per call: whether the actions include
            # start_stream, and their names only when they do not (what no_stream's reason says).
            "'start_stream': coalesce(list_contains(mv.action_types, 'start_stream'), false), "
            "'types': CASE WHEN NOT coalesce(list_contains(mv.action_types, 'start_stream'), false) "
            "THEN array_to_string(coalesce(mv.action_types, []), ',') END, "
            f"'problems': CASE WHEN {INVALID} THEN mv.action_problems END, "
            f"'messages': CASE WHEN {INVALID} THEN mv.action_problem_messages END, "
            "'stream_url': mv.stream_url, 'track': mv.track, "
            f"'body': CASE WHEN {INVALID} THEN left(mv.response_body, {BODY_CHARS}) END, "
            f"'who': {WHO_SQL}}}",
            "ok",
        ),
        agg(
            "au_last_failed",
            au,
            "max",
            "{'t': start_ns, 'status': mv.http_status_code, "
            f"'latency_ms': {c['LATENCY']}, 'is_json': {c['IS_JSON']}, "
            f"'body': left(mv.response_body, {BODY_CHARS}), 'error_type': mv.error_type, "
            f"'path': mv.url_path, 'who': {WHO_SQL}}}",
            "NOT ok",
        ),
        # 2.-3. the stream receiver: connections, media, how they ended
        count("rx_connections", rx),
        count("rx_dropped", rx, c["DROPPED"]),
        agg("rx_first_ns", rx, "min", "start_ns"),
        agg("rx_last_ns", rx, "max", "end_ns"),
        agg(
            "rx_first_media_ns",
            rx,
            "min",
            f"coalesce(mv.media_first_at_ns, {_event_times('first_media', 'min')}, "
            "CASE WHEN mv.media_frames > 0 THEN start_ns END)",
        ),
        agg(
            "rx_last_media_ns",
            rx,
            "max",
            "coalesce(mv.media_last_at_ns, CASE WHEN mv.media_frames > 0 THEN end_ns END)",
        ),
        agg("media_frames", rx, "sum", "coalesce(mv.media_frames, 0)"),
        agg("media_gap_max_ms", rx, "max", "mv.media_gap_max_ms"),
        # The collector counts errors in `minivoice.errors`; spans without it count their events.
        agg(
            "rx_errors",
            rx,
            "sum",
            "coalesce(mv.errors, len(list_filter(events, lambda e: e.name = 'error')))",
        ),
        agg("rx_first_error", rx, "min", f"CASE WHEN coalesce(mv.errors, 1) > 0 THEN {FIRST_ERROR_SQL} END"),
        agg(
            "rx_first_drop",
            rx,
            "min",
            "{'t': end_ns, 'code': mv.close_code, 'closed_by': mv.closed_by, 'reason': mv.close_reason}",
            c["DROPPED"],
        ),
        agg(
            "rx_last",
            rx,
            "max",
            "{'t': end_ns, 'code': mv.close_code, 'closed_by': mv.closed_by, "
            "'reason': mv.close_reason, 'stop_reason': mv.stop_reason, 'stopped': stopped}",
        ),
        # 4. webhooks: the lifecycle, with completion as the source of truth
        count("wh_deliveries", wh, "delivered"),
        count("wh_malformed", wh, "NOT delivered"),
        agg("wh_first_ns", wh, "min", "least(start_ns, created_ns)"),
        agg("wh_last_ns", wh, "max", "greatest(end_ns, created_ns)"),
        *[
            count(f"wh_{event.split('.')[1]}_n", wh, f"delivered AND mv.event = '{event}'")
            for event in KNOWN_EVENTS
        ],
        count("wh_other_n", wh, other_event),
        Fact(
            "wh_other_events",
            wh,
            "list_distinct",
            "mv.event",
            other_event,
            "list_distinct(flatten(list(wh_other_events)))",
        ),
        agg(
            "completed",
            wh,
            "min",
            f"{{'t': created_ns, 'status': mv.call_status, 'received_ns': start_ns, 'who': {WHO_SQL}}}",
            completed,
        ),
        # The latest lifecycle status before completion: what a call without call.completed got to.
        agg(
            "wh_latest",
            wh,
            "max",
            "{'t': created_ns, 'status': mv.call_status, 'event': mv.event}",
            "delivered AND mv.call_status IS NOT NULL AND mv.event <> 'call.completed'",
        ),
    ]


def _combined(fact: Fact) -> str:
    parts = [f"g_{group}.{fact.name}" for group in GROUPS]
    if fact.combine == "sum":
        return " + ".join(f"coalesce({p}, 0)" for p in parts)
    return f"{fact.combine}({', '.join(parts)})"  # greatest/least skip NULLs


#: Sources whose calls nearly always have one span (one answer_url request, one receiver
#: connection): their facts are a projection of that span, and only the calls with several are
#: aggregated. A million single-span groups through a hash aggregate cost 3x more CPU, most of it
#: copying the picks into aggregate state.
ONE_SPAN_GROUPS = (ANSWER_URL, RECEIVER)


def group_facts_sql(span_rows: str, group: str, config: FactsConfig) -> str:
    """SQL: the facts of one source group, one row per call id with spans of that source."""
    known = ", ".join(f"'{g}'" for g in GROUPS if g != OTHER)
    own = [f for f in facts(config) if f.group in (group, EVERY)]
    where = f"(source IS NULL OR source NOT IN ({known}))" if group == OTHER else f"source = '{group}'"
    rows = (
        f"(SELECT *, {_group_columns(group, config)} FROM {span_rows}\n"
        f"      WHERE call_id IS NOT NULL AND {where})"
    )
    aggregates = ",\n       ".join(f"{f.over_spans} AS {f.name}" for f in own)
    if group not in ONE_SPAN_GROUPS:
        return f"SELECT call_id,\n       {aggregates}\nFROM {rows}\nGROUP BY call_id"
    # The calls with several spans of the source (a retried request, a reconnect): a narrow pass
    # over the call ids. With none, DuckDB skips the aggregated branch's scan altogether; with a
    # few, its scan reads only their rows' groups.
    several = (
        f"SELECT call_id FROM (SELECT call_id FROM {span_rows} WHERE call_id IS NOT NULL AND {where}) "
        "GROUP BY call_id HAVING count(*) > 1"
    )
    projected = ",\n       ".join(f"{f.over_one_span} AS {f.name}" for f in own)
    return (
        f"WITH several AS MATERIALIZED ({several})\n"
        f"SELECT call_id,\n       {projected}\nFROM {rows}\n"
        "WHERE call_id NOT IN (SELECT call_id FROM several)\n"
        f"UNION ALL\nSELECT call_id,\n       {aggregates}\nFROM {rows}\n"
        "WHERE call_id IN (SELECT call_id FROM several)\nGROUP BY call_id"
    )


def join_groups_sql(groups: dict[str, str], config: FactsConfig) -> str:
    """SQL: one facts row per call from the group relations (`GROUPS` name -> relation)."""
    outputs = []
    for f in facts(config):
        value = _combined(f) if f.group == EVERY else f.name
        outputs.append(
            f"coalesce({value}, {f.empty}) AS {f.name}" if f.empty is not None else f"{value} AS {f.name}"
        )
    keys = "coalesce(" + ", ".join(f"g_{group}.call_id" for group in GROUPS) + ")"
    joins = " ".join(
        f"FULL JOIN {groups[group]} g_{group} ON g_{group}.call_id = coalesce("
        + ", ".join(f"g_{g}.call_id" for g in GROUPS[:i])
        + ")"
        for i, group in enumerate(GROUPS[1:], start=1)
    )
    columns = ",\n       ".join(outputs)
    return f"SELECT {keys} AS call_id,\n       {columns}\nFROM {groups[GROUPS[0]]} g_{GROUPS[0]} {joins}"


def call_facts_sql(span_rows: str, config: FactsConfig) -> str:
    """SQL: one facts row per call id (spans without a call id are left out: see unattributed).

    Each source's spans are aggregated on their own (`span_rows` is read once per group: a Parquet
    scan pushes the source filter down and reads only that source's fields), then the groups are
    joined on the call id.
    """
    ctes = ", ".join(f"g_{group}_rows AS ({group_facts_sql(span_rows, group, config)})" for group in GROUPS)
    return f"WITH {ctes}\n" + join_groups_sql({g: f"g_{g}_rows" for g in GROUPS}, config)


def merge_facts_sql(facts_rows: str, config: FactsConfig) -> str:
    """SQL: merge several facts rows of the same call (e.g. stored facts + a new batch's) into one."""
    columns = ",\n       ".join(f"{f.merge} AS {f.name}" for f in facts(config))
    return f"SELECT call_id,\n       {columns}\nFROM {facts_rows}\nGROUP BY call_id"


#: The span columns facts read (besides the `minivoice` fields of `minivoice_fields_read`).
SPAN_COLUMNS_READ = (
    "call_id", "source", "trace_id", "span_id", "start_ns", "end_ns", "ingested_at_ns", "events",
)  # fmt: skip


def minivoice_fields_read(config: FactsConfig | None = None) -> list[str]:
    """The `minivoice` fields facts read, in MINIVOICE_FIELDS order (what a fair floor scans)."""
    import re

    used = set(re.findall(r"\bmv\.(\w+)", call_facts_sql("span_rows", config or FactsConfig())))
    return [name for name, _, _ in MINIVOICE_FIELDS if name in used]


def fact_names(config: FactsConfig | None = None) -> list[str]:
    """Names of the facts columns (after `call_id`)."""
    return [f.name for f in facts(config or FactsConfig())]
