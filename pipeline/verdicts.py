"""From per-call facts to `calls` rows: verdict, reason, next step, times on one clock.

Pure: SQL builders plus `evaluate`, which runs them on an in-memory DuckDB over Arrow tables
(span rows in, calls and call_events out; no clock, no files). `pipeline.timeline` runs the same
SQL over Parquet segments and the stored facts.

The verdict is the first rule of `pipeline.rules` that holds. What the rules see is the call's
facts (`pipeline.facts`) plus a few derived columns computed here:

- `completed_ns`, `completed_status`: the first `call.completed` (by its `created_at`);
- `expired`: not completed, and no new span of the call for `grace_seconds` (by ingest time);
- `concluded`: completed or expired: what absence means can be judged;
- `settled`: completed, and no new span for `settle_seconds` (late spans: a receiver span is
  exported when its connection closes, a moment after the call ends);
- `is_final`: settled or expired. Until then the verdict is the best current judgement and may
  still change; root spans wait for it;
- `answered`, `start_stream`, `only_no_actions`;
- the receiver clock skew (below), and the receiver times corrected by it.

Receiver clock skew. The receiver's clock may be off by seconds. Causality bounds it: the true
connection happens after the usable answer_url response ended (`t_a`), and the
stream ends no later than the call completes (`t_c`, `call.completed` `created_at`, which has
whole-second resolution, so its upper end, capped by the delivery's arrival). With receiver times
`r_connect` (first connection) and `r_disconnect` (last close), the skew `s` satisfies
`r_disconnect - t_c <= s <= r_connect - t_a`. If the interval lies beyond `skew_tolerance_ms`
on one side of 0, the nearest bound is reported (a lower bound on the true offset); if it holds
0, the skew is 0; with no receiver span or no anchor it is null; if the bounds contradict each
other it is null too. The skew only moves receiver times onto the webhook clock: no rule
compares times across clocks, so it never changes a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline import facts as facts_mod
from pipeline.events import call_points_sql
from pipeline.rules import NEXT_STEPS, RulesConfig, rules
from pipeline.tables import call_events_view_sql

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


def _ts(ns: str) -> str:
    """SQL: unix nanoseconds to TIMESTAMPTZ (microseconds; the session time zone must be UTC)."""
    return f"CAST(make_timestamp(({ns}) // 1000) AS TIMESTAMPTZ)"


def next_step_for(verdict: str) -> str:
    """The next step of a verdict in general terms (a call's own row says it with specifics)."""
    return NEXT_STEPS[verdict]


def derived_sql(facts_rows: str, as_of_ns: int, config: RulesConfig) -> str:
    """SQL: facts rows plus the derived columns the rules read."""
    settle = config.settle_seconds * NS_PER_S
    grace = config.grace_seconds * NS_PER_S
    tolerance = config.skew_tolerance_ms * NS_PER_MS
    return f"""
WITH base AS (
    SELECT f.*,
           sha256('minivoice-call/' || call_id) AS identity_digest,
           completed.t AS completed_ns,
           completed.status AS completed_status,
           completed IS NOT NULL AND {as_of_ns} >= last_ingested_ns + {settle} AS settled,
           completed IS NULL AND {as_of_ns} >= last_ingested_ns + {grace} AS expired,
           wh_answered_n > 0 OR completed.status = 'completed' OR au_requests > 0 OR rx_connections > 0
               AS answered,
           coalesce(au_first_ok.problems = ['no_actions'], false) AS only_no_actions,
           coalesce(au_first_ok.valid AND au_first_ok.start_stream, false) AS start_stream,
           rx_last_ns - least(completed.t + CASE WHEN completed.t % {NS_PER_S} = 0
                                                 THEN {NS_PER_S - 1} ELSE 0 END,
                              completed.received_ns) AS skew_low,
           rx_first_ns - au_first_ok.end_ns AS skew_high
    FROM {facts_rows} f
), skewed AS (
    SELECT *,
           completed IS NOT NULL OR expired AS concluded,
           settled OR expired AS is_final,
           CASE WHEN rx_connections = 0 OR (skew_low IS NULL AND skew_high IS NULL) THEN NULL
                WHEN skew_low > skew_high + {tolerance} THEN NULL
                WHEN skew_low > {tolerance} THEN skew_low
                WHEN skew_high < -{tolerance} THEN skew_high
                ELSE 0 END AS skew_ns
    FROM base
)
SELECT *,
       rx_first_ns - coalesce(skew_ns, 0) AS rx_first_adj_ns,
       rx_last_ns - coalesce(skew_ns, 0) AS rx_last_adj_ns,
       greatest(au_last_ns, wh_last_ns, rx_last_ns - coalesce(skew_ns, 0)) AS last_activity_ns,
       least(au_first_ns, wh_first_ns, rx_first_ns - coalesce(skew_ns, 0)) AS first_activity_ns,
       (completed_ns - (rx_last_ns - coalesce(skew_ns, 0))) / 1e6 AS stream_ended_before_call_ms
FROM skewed
"""


def verdict_sql(derived_rows: str, config: RulesConfig) -> str:
    """SQL: the rule index of each derived row, then its verdict, stage, reason and next step."""
    ordered = rules(config)
    index = " ".join(f"WHEN {rule.when} THEN {i}" for i, rule in enumerate(ordered))

    def pick(field: str) -> str:
        whens = " ".join(f"WHEN {i} THEN {getattr(rule, field)}" for i, rule in enumerate(ordered))
        return f"CASE rule_index {whens} END"

    def pick_literal(field: str) -> str:
        whens = " ".join(f"WHEN {i} THEN '{getattr(rule, field)}'" for i, rule in enumerate(ordered))
        return f"CASE rule_index {whens} END"

    return f"""
SELECT *,
       {pick_literal("verdict")} AS verdict,
       {pick_literal("stage")} AS failure_stage,
       {pick("reason")} AS reason,
       {pick("next_step")} AS next_step
FROM (SELECT *, CASE {index} END AS rule_index FROM {derived_rows})
"""


def _who(field: str) -> str:
    """SQL: a field of the call's identity: MiniVoice's call.completed first, else the answer_url's."""
    return f"coalesce(completed.who.{field}, au_first_ok.who.{field}, au_last_failed.who.{field})"


CALLS_COLUMNS_SQL = f"""
    call_id,
    substr(identity_digest, 1, 32) AS trace_id,
    verdict, failure_stage, reason, next_step,
    is_final,
    {_who("customer_id")} AS customer_id,
    {_who("application_id")} AS application_id,
    {_who("direction")} AS direction,
    coalesce(completed_status, wh_latest.status) AS call_status,
    {_ts("first_activity_ns")} AS first_seen_at,
    {_ts("last_activity_ns")} AS last_seen_at,
    coalesce(au_first_ok.status, au_last_failed.status) AS answer_url_status,
    coalesce(au_first_ok.latency_ms, au_last_failed.latency_ms) AS answer_url_latency_ms,
    au_requests AS answer_url_requests,
    coalesce(au_first_ok.body, au_last_failed.body) AS answer_url_response_body,
    au_first_ok.valid AS action_valid,
    CASE WHEN au_first_ok IS NOT NULL THEN coalesce(au_first_ok.problems, []) END AS action_problems,
    au_first_ok.stream_url AS stream_url,
    au_first_ok.track AS track,
    {_ts("rx_first_adj_ns")} AS connected_at,
    {_ts("rx_first_media_ns - coalesce(skew_ns, 0)")} AS first_media_at,
    {_ts("rx_last_media_ns - coalesce(skew_ns, 0)")} AS last_media_at,
    media_frames,
    media_gap_max_ms,
    {_ts("rx_last_adj_ns")} AS disconnected_at,
    coalesce(rx_first_drop.code, rx_last.code) AS close_code,
    coalesce(rx_first_drop.closed_by, rx_last.closed_by) AS closed_by,
    coalesce(rx_first_drop.reason, rx_last.reason) AS close_reason,
    rx_last.stop_reason AS stop_reason,
    rx_connections AS receiver_connections,
    rx_errors AS receiver_errors,
    CASE WHEN rx_connections > 0 THEN stream_ended_before_call_ms END AS stream_ended_before_call_ms,
    {_ts("completed_ns")} AS completed_at,
    wh_deliveries + wh_malformed AS webhook_count,
    greatest(wh_initiated_n - 1, 0) + greatest(wh_ringing_n - 1, 0) + greatest(wh_answered_n - 1, 0)
        + greatest(wh_completed_n - 1, 0) + wh_other_n - len(coalesce(wh_other_events, []))
        AS duplicate_webhooks,
    CAST(round(skew_ns / {NS_PER_MS}) AS BIGINT) AS receiver_clock_skew_ms,
    span_count
"""


def calls_sql(facts_rows: str, as_of_ns: int, config: RulesConfig) -> str:
    """SQL: the public `calls` columns, plus `next_check_ns` (when a non-final call must be
    re-evaluated even without new spans) and the first and last activity for root spans."""
    settle = config.settle_seconds * NS_PER_S
    grace = config.grace_seconds * NS_PER_S
    derived = f"({derived_sql(facts_rows, as_of_ns, config)})"
    return f"""
SELECT {CALLS_COLUMNS_SQL},
       {_ts(str(as_of_ns))} AS evaluated_at,
       CASE WHEN is_final THEN NULL
            WHEN completed_ns IS NOT NULL THEN last_ingested_ns + {settle}
            ELSE last_ingested_ns + {grace} END AS next_check_ns,
       first_activity_ns, last_activity_ns, substr(identity_digest, 33, 16) AS root_span_id
FROM ({verdict_sql(derived, config)})
"""


#: Columns of `calls_sql` that are bookkeeping, not part of the public `calls` table.
INTERNAL_COLUMNS = ("next_check_ns", "first_activity_ns", "last_activity_ns", "root_span_id")


@dataclass(frozen=True, slots=True)
class Timelines:
    """What `evaluate` returns: the calls, their timeline points, and spans without a call id."""

    calls: pa.Table
    call_events: pa.Table
    unattributed: pa.Table


UNATTRIBUTED_SQL = """
SELECT trace_id, span_id, source, name, service_name, status_code,
       CAST(make_timestamp(start_ns // 1000) AS TIMESTAMPTZ) AS start_at,
       CAST(make_timestamp(end_ns // 1000) AS TIMESTAMPTZ) AS end_at,
       CAST(make_timestamp(ingested_at_ns // 1000) AS TIMESTAMPTZ) AS ingested_at
FROM {source}
WHERE call_id IS NULL AND source IS DISTINCT FROM 'pipeline'
"""


def evaluate(spans: pa.Table, as_of_ns: int, config: RulesConfig | None = None) -> Timelines:
    """Span rows (SPAN_SCHEMA, optionally with the `minivoice` column) to calls and call_events.

    Pure: same spans, same `as_of_ns`, same config, same result, whatever the row order.
    Duplicate span rows (OTLP retries: same trace_id and span_id) count once.
    """
    import duckdb

    config = config or RulesConfig()
    facts_config = facts_mod.FactsConfig(answer_url_timeout_ms=config.answer_url_timeout_ms)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("spans_in", spans)
        has_column = facts_mod.MINIVOICE_COLUMN in spans.schema.names
        # One copy of each span. Retries are identical; the incremental build counts the copy it saw
        # first, so this does too (the `spans` view shows the latest, for re-emitted root spans).
        con.execute(
            "CREATE TEMP TABLE spans_unique AS SELECT * FROM spans_in "
            "QUALIFY row_number() OVER (PARTITION BY trace_id, span_id "
            "ORDER BY ingested_at_ns, end_ns DESC, attributes) = 1"
        )
        rows = facts_mod.span_rows_sql("spans_unique", mode="mixed" if has_column else "json")
        con.execute(f"CREATE TEMP TABLE span_rows AS {rows}")
        con.execute(f"CREATE TEMP TABLE facts AS {facts_mod.call_facts_sql('span_rows', facts_config)}")
        internal = ", ".join(INTERNAL_COLUMNS)
        con.execute(
            f"CREATE TEMP TABLE calls AS SELECT * EXCLUDE ({internal}) "
            f"FROM ({calls_sql('facts', as_of_ns, config)})"
        )
        calls = con.sql("SELECT * FROM calls ORDER BY call_id").to_arrow_table()
        points = f"({call_points_sql('spans_unique')})"
        events = con.sql(
            f"{call_events_view_sql(points, 'calls')} ORDER BY call_id, ts, ord, span_id"
        ).to_arrow_table()
        unattributed = con.sql(
            UNATTRIBUTED_SQL.format(source="spans_unique") + " ORDER BY start_at, span_id"
        ).to_arrow_table()
    return Timelines(calls=calls, call_events=events, unattributed=unattributed)
