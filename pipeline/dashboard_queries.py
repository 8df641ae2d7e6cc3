"""Every query the dashboard runs, as plain functions over a read-only DuckDB connection.

The connection is `DataDir(path).connect_readonly()`: an in-memory DuckDB with the views `spans`,
`spans_raw`, `calls` and `call_events`. Nothing here imports Streamlit, reads a clock or writes a
file, so each function is tested on its own (tests/pipeline/test_dashboard_queries.py) and timed
at 1M calls (bench/dashboard.py). Tables come back as Polars DataFrames; single rows as dicts.

Time windows are half-open `[start, end)` over `calls.first_seen_at` (when the call was first
seen), in UTC. A failure is a final call whose `failure_stage` is not `none`; the failure rate is
failures over final calls, so calls still in progress neither raise nor dilute it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collectors.identity import call_trace_id_hex
from pipeline.storage import SPAN_COPY_ORDER

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import pyarrow as pa

#: The debug order of the MiniVoice docs, as funnel steps: (label, the failure_stage that stops a call
#: from passing this step). A call counts at a step when no earlier-or-equal stage failed it.
FUNNEL_STEPS: tuple[tuple[str, str], ...] = (
    ("answered", "answer_url"),
    ("valid action", "action"),
    ("connected", "connect"),
    ("media flowing", "media"),
    ("clean end", "stream"),
    ("completed", "lifecycle"),
)

#: Verdicts that are not failures (failure_stage `none`).
NON_FAILURE_VERDICTS = ("ok", "no_stream", "in_progress")

#: Columns shown in the calls table, in order (those missing from `calls` are skipped).
CALL_LIST_COLUMNS = (
    "call_id",
    "first_seen_at",
    "verdict",
    "failure_stage",
    "reason",
    "application_id",
    "customer_id",
    "direction",
    "call_status",
    "close_code",
    "closed_by",
    "media_frames",
)

#: Sort orders offered by the calls table: label -> ORDER BY clause.
CALL_SORTS: dict[str, str] = {
    "failures first": (
        "(failure_stage IS NULL OR failure_stage = 'none'), first_seen_at DESC NULLS LAST, call_id"
    ),
    "newest first": "first_seen_at DESC NULLS LAST, call_id",
    "oldest first": "first_seen_at ASC NULLS LAST, call_id",
    "call id": "call_id",
}

_PHONE_QUERY = re.compile(r"^\+?[\d\s().\-/]{7,}$")


class QueryError(ValueError):
    """A dashboard query was asked something it cannot answer (unknown column, bad window)."""


def open_views(data_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection over the data directory's views, with the session time zone UTC.

    `calls` times are TIMESTAMP (UTC, no zone); comparing them with the zone-aware datetimes the
    filters pass would otherwise convert through the process's local time zone.
    """
    from pipeline.storage import DataDir

    con = DataDir(data_dir).connect_readonly()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    """Run a query and return its result as a Polars DataFrame (through Arrow, no copy)."""

    relation = con.sql(sql, params=list(params))
    if relation is None:  # only for statements that do not read; every query here reads
        raise QueryError(f"query returned no relation: {sql[:80]}")
    return relation.pl()


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    """The single row of an aggregate query (fetched to the end: DuckDB refuses half-read results)."""
    rows = con.execute(sql, list(params)).fetchall()
    return tuple(rows[0])


# ---- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallFilter:
    """The sidebar: a time window over `first_seen_at` and optional sets of values (empty = any)."""

    start: datetime | None = None
    end: datetime | None = None
    application_ids: tuple[str, ...] = ()
    customer_ids: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()

    def previous(self) -> CallFilter | None:
        """The same filter over the window just before this one (None for an open window)."""
        if self.start is None or self.end is None:
            return None
        length = self.end - self.start
        return replace(self, start=self.start - length, end=self.start)


def last(window: timedelta, now: datetime, **values: Any) -> CallFilter:
    """A filter over the `window` that ends at `now` (the caller's clock)."""
    return CallFilter(start=now - window, end=now, **values)


def _utc(moment: datetime) -> datetime:
    """A naive UTC datetime: it binds as TIMESTAMP, the type of `calls` times, so the comparison
    keeps the column as it is (and Parquet min/max statistics can skip row groups)."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _where(flt: CallFilter, *, with_time: bool = True) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if with_time and flt.start is not None:
        clauses.append("first_seen_at >= ?")
        params.append(_utc(flt.start))
    if with_time and flt.end is not None:
        clauses.append("first_seen_at < ?")
        params.append(_utc(flt.end))
    for column, values in (
        ("application_id", flt.application_ids),
        ("customer_id", flt.customer_ids),
        ("direction", flt.directions),
        ("verdict", flt.verdicts),
    ):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    return (" AND ".join(clauses) or "true"), params


_FAILED = "(is_final AND failure_stage IS NOT NULL AND failure_stage <> 'none')"

CALLS = "calls"
OVERVIEW_COUNTS = "overview_counts"
"""The temporary table `overview` fills with the window's counts (one read of `calls`)."""


# ---- the data directory at a glance ----------------------------------------------------------


def views(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the views and tables the connection has."""
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def columns(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    """Column names of a view, in order (empty when the view does not exist)."""
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [view],
    ).fetchall()
    return [row[0] for row in rows]


@dataclass(frozen=True, slots=True)
class DataSummary:
    """What a data directory holds: enough to tell "no data yet" from "nothing in this window"."""

    calls: int
    first_seen: datetime | None
    last_seen: datetime | None
    spans: int
    spans_without_call_id: int

    @property
    def empty(self) -> bool:
        return self.calls == 0 and self.spans == 0


def data_summary(con: duckdb.DuckDBPyConnection) -> DataSummary:
    """Counts of calls and spans (spans without a call id are counted, never dropped)."""
    present = views(con)
    calls, first_seen, last_seen = 0, None, None
    if "calls" in present:
        calls, first_seen, last_seen = _one(
            con, "SELECT count(*), min(first_seen_at), max(first_seen_at) FROM calls"
        )
    spans = orphans = 0
    if "spans_raw" in present:
        # spans_raw, not the de-duplicating view: a count does not need the window over every span.
        spans, orphans = _one(con, "SELECT count(*), count(*) FILTER (WHERE call_id IS NULL) FROM spans_raw")
    return DataSummary(int(calls), first_seen, last_seen, int(spans), int(orphans))


@dataclass(frozen=True, slots=True)
class FilterOptions:
    """The values each sidebar filter offers, most frequent first."""

    application_ids: list[str] = field(default_factory=list)
    customer_ids: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)


def filter_options(con: duckdb.DuckDBPyConnection, limit: int = 500) -> FilterOptions:
    """Distinct applications, customers, directions and verdicts, most frequent first.

    One pass over `calls` (GROUPING SETS), whatever the number of filters.
    """
    if CALLS not in views(con):
        return FilterOptions()
    names = ("application_id", "customer_id", "direction", "verdict")
    rows = con.execute(
        "SELECT grouping_id(application_id, customer_id, direction, verdict) AS g, "
        "coalesce(application_id, customer_id, direction, verdict) AS value, count(*) AS n FROM calls "
        "GROUP BY GROUPING SETS ((application_id), (customer_id), (direction), (verdict)) "
        "ORDER BY g, n DESC, value"
    ).fetchall()
    # grouping_id sets a bit for each column NOT grouped on: the grouped one is the zero bit.
    found: dict[str, list[str]] = {name: [] for name in names}
    for g, value, _ in rows:
        name = next(n for i, n in enumerate(names) if not (int(g) >> (len(names) - 1 - i)) & 1)
        if value is not None and len(found[name]) < limit:
            found[name].append(str(value))
    return FilterOptions(found["application_id"], found["customer_id"], found["direction"], found["verdict"])


# ---- overview --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Counts over one window."""

    calls: int
    final: int
    failures: int
    in_progress: int

    @property
    def failure_rate(self) -> float | None:
        """Failures over final calls; None when no call is final."""
        return self.failures / self.final if self.final else None


@dataclass(frozen=True, slots=True)
class Kpis:
    """The overview's headline numbers, and the same numbers for the previous window."""

    current: WindowCounts
    previous: WindowCounts | None

    def delta(self, name: str) -> float | None:
        """current - previous for `calls`, `failures`, `in_progress` or `failure_rate` (None if unknown)."""
        if self.previous is None:
            return None
        now, before = getattr(self.current, name), getattr(self.previous, name)
        if now is None or before is None:
            return None
        return float(now - before)


def _counts(con: duckdb.DuckDBPyConnection, flt: CallFilter) -> WindowCounts:
    where, params = _where(flt)
    calls, final, failures, in_progress = _one(
        con,
        "SELECT count(*), count(*) FILTER (WHERE is_final), "
        f"count(*) FILTER (WHERE {_FAILED}), count(*) FILTER (WHERE NOT is_final) "
        f"FROM calls WHERE {where}",
        params,
    )
    return WindowCounts(int(calls), int(final), int(failures), int(in_progress))


def kpis(con: duckdb.DuckDBPyConnection, flt: CallFilter) -> Kpis:
    """Calls, failures, failure rate and calls in progress, in the window and the one before it."""
    previous = flt.previous()
    if CALLS not in views(con):
        empty = WindowCounts(0, 0, 0, 0)
        return Kpis(empty, None if previous is None else empty)
    return Kpis(_counts(con, flt), None if previous is None else _counts(con, previous))


#: Bucket widths the failures chart offers, and the window each is the natural choice up to.
BUCKETS: tuple[tuple[str, timedelta], ...] = (
    ("1 minute", timedelta(minutes=1)),
    ("5 minutes", timedelta(minutes=5)),
    ("15 minutes", timedelta(minutes=15)),
    ("1 hour", timedelta(hours=1)),
    ("6 hours", timedelta(hours=6)),
    ("1 day", timedelta(days=1)),
)


def default_bucket(span: timedelta | None) -> str:
    """A bucket width that gives the chart roughly 30 to 120 bars over `span`."""
    if span is None:
        return "1 hour"
    for label, width in BUCKETS:
        if span / width <= 120:
            return label
    return BUCKETS[-1][0]


def failures_over_time(con: duckdb.DuckDBPyConnection, flt: CallFilter, bucket: timedelta) -> pl.DataFrame:
    """Failed calls per time bucket and verdict: columns `bucket` (UTC start), `verdict`, `calls`."""

    if bucket <= timedelta(0):
        raise QueryError(f"bucket must be positive, got {bucket}")
    if CALLS not in views(con):
        return _empty_series()
    where, params = _where(flt)
    micros = int(bucket / timedelta(microseconds=1))
    return _frame(
        con,
        f"SELECT time_bucket(to_microseconds(?), first_seen_at::TIMESTAMPTZ) AS bucket, verdict, "
        f"count(*) AS calls FROM calls WHERE {where} AND {_FAILED} "
        "GROUP BY ALL ORDER BY bucket, verdict",
        [micros, *params],
    )


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """One step of the debug-order funnel."""

    step: str
    stage: str
    calls: int
    lost: int
    """Calls that failed exactly at this step."""
    share: float
    """calls / the funnel's base (1.0 at the top when nothing failed at the first step)."""


def funnel(con: duckdb.DuckDBPyConnection, flt: CallFilter) -> list[FunnelStep]:
    """The debug-order funnel over final calls that tried to stream.

    The base is every final call except `no_stream` (answer_url asked for no stream: not a
    failure, and not a stream to follow). Verdicts name the first failing step, so a call
    passes every step before its failure stage.
    """
    rows: list[tuple[Any, ...]] = []
    if CALLS in views(con):
        where, params = _where(flt)
        rows = con.execute(
            f"SELECT coalesce(failure_stage, 'none'), count(*) FROM calls WHERE {where} "
            "AND is_final AND verdict <> 'no_stream' GROUP BY ALL",
            params,
        ).fetchall()
    return _funnel_steps({str(stage): int(n) for stage, n in rows})


def _funnel_steps(lost_by_stage: Mapping[str, int]) -> list[FunnelStep]:
    """The funnel from the number of base calls stopped at each failure stage (`none`: went through)."""
    base = sum(lost_by_stage.values())
    steps: list[FunnelStep] = []
    remaining = base
    for label, stage in FUNNEL_STEPS:
        lost = lost_by_stage.get(stage, 0)
        remaining -= lost
        steps.append(FunnelStep(label, stage, remaining, lost, remaining / base if base else 0.0))
    return steps


def top_failures(con: duckdb.DuckDBPyConnection, flt: CallFilter, by: str, limit: int = 10) -> pl.DataFrame:
    """The `by` values (application_id or customer_id) with the most failures.

    Columns: `<by>`, `failures`, `calls`, `failure_rate` (over final calls), `top_verdict`.
    """
    _check_top(by)
    if CALLS not in views(con):
        return _empty_top(by)
    where, params = _where(flt)
    per_verdict = (
        f"SELECT {by}, verdict, is_final, {_FAILED} AS failed, count(*) AS n "
        f"FROM calls WHERE {where} GROUP BY ALL"
    )
    return _frame(con, _top_sql(by, per_verdict), [*params, limit])


def _check_top(by: str) -> None:
    if by not in ("application_id", "customer_id"):
        raise QueryError(f"top failures are by application_id or customer_id, not {by!r}")


def _top_sql(by: str, per_verdict: str) -> str:
    """The top-failures query over `per_verdict` (rows of `by`, verdict, is_final, failed, n).

    Counting per (key, verdict) first makes the most common failing verdict (ties: the first by
    name) a pick among a few rows per key, much cheaper than mode() over every call.
    """
    return (
        f"WITH per_verdict AS ({per_verdict}) "
        f"SELECT {by}, sum(n) FILTER (WHERE failed)::BIGINT AS failures, sum(n)::BIGINT AS calls, "
        "failures / nullif(sum(n) FILTER (WHERE is_final), 0) AS failure_rate, "
        "first(verdict ORDER BY n DESC, verdict) FILTER (WHERE failed) AS top_verdict "
        f"FROM per_verdict GROUP BY {by} HAVING failures > 0 ORDER BY failures DESC, {by} LIMIT ?"
    )


def _empty_top(by: str) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(
        schema={
            by: pl.String,
            "failures": pl.Int64,
            "calls": pl.Int64,
            "failure_rate": pl.Float64,
            "top_verdict": pl.String,
        }
    )


def _empty_series() -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema={"bucket": pl.Datetime("us", "UTC"), "verdict": pl.String, "calls": pl.Int64})


def failures_by_verdict(con: duckdb.DuckDBPyConnection, flt: CallFilter) -> list[tuple[str, str, int]]:
    """(verdict, failure_stage, failed calls) in the window, most frequent first."""
    if CALLS not in views(con):
        return []
    where, params = _where(flt)
    rows = con.execute(
        f"SELECT verdict, failure_stage, count(*) AS n FROM calls WHERE {where} AND {_FAILED} "
        "GROUP BY ALL ORDER BY n DESC, verdict",
        params,
    ).fetchall()
    return [(str(v), str(s), int(n)) for v, s, n in rows]


def failing_since(series: pl.DataFrame, verdict: str, bucket: timedelta) -> tuple[datetime, datetime] | None:
    """When the latest burst of `verdict` failures began, and the start of its last bucket.

    `series` is `Overview.series` (bucket, verdict, calls). A burst is a run of buckets with at
    least one such failure, with at most one empty bucket between two of them; None without any.
    """
    times = sorted(
        b for b, v, n in series.select("bucket", "verdict", "calls").iter_rows() if v == verdict and n > 0
    )
    if not times:
        return None
    start = times[-1]
    for earlier in reversed(times[:-1]):
        if start - earlier > 2 * bucket:
            break
        start = earlier
    return start, times[-1]


def _clock(moment: datetime, reference: datetime) -> str:
    """`HH:MM UTC`, with the date when it is not the reference's day."""
    moment, reference = _utc(moment), _utc(reference)
    return f"{moment:%H:%M} UTC" if moment.date() == reference.date() else f"{moment:%b %d %H:%M} UTC"


def headline(
    counts: WindowCounts,
    by_verdict: Sequence[tuple[str, str, int]],
    worst: Mapping[str, Any] | None,
    since: tuple[datetime, datetime] | None = None,
) -> str:
    """The overview's one-sentence answer: how many failed, at which step, since when (`since`:
    the start and last bucket of the top verdict's latest burst, `failing_since`) and for whom
    (Markdown)."""
    if counts.calls == 0:
        return "No calls in this window."
    if counts.final == 0:
        return f"{counts.calls} calls, none final yet."
    if counts.failures == 0:
        return f"No failures: all {counts.final} final calls went through every step."
    rate = counts.failures / counts.final
    text = f"**{counts.failures:,} of {counts.final:,} final calls failed ({rate:.1%}).**"
    if by_verdict:
        verdict, stage, n = by_verdict[0]
        text += f" Most failed at **{stage}**: `{verdict}` ({n:,} calls)"
        if since is not None:
            first, last = since
            text += f", since **{_clock(first, last)}**"
            text += f" (latest: the {_clock(last, last)} bucket)" if last != first else ""
        text += "."
    if worst:
        key = "application_id" if "application_id" in worst else "customer_id"
        text += f" Most failures: {key.removesuffix('_id')} `{worst[key]}` ({worst['failures']:,})."
    return text


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the Overview page shows for one window, computed in one go by `overview`."""

    kpis: Kpis
    by_verdict: list[tuple[str, str, int]]
    funnel: list[FunnelStep]
    top_applications: pl.DataFrame
    top_customers: pl.DataFrame
    series: pl.DataFrame
    """Failed calls per bucket and verdict (`failures_over_time`)."""
    bucket: timedelta
    """The width of the series' buckets."""

    def headline(self) -> str:
        """The one-sentence answer (see `headline`)."""
        worst = self.top_applications.row(0, named=True) if self.top_applications.height else None
        since = failing_since(self.series, self.by_verdict[0][0], self.bucket) if self.by_verdict else None
        return headline(self.kpis.current, self.by_verdict, worst, since)


def overview(con: duckdb.DuckDBPyConnection, flt: CallFilter, bucket: timedelta, top: int = 10) -> Overview:
    """The Overview page's figures: KPIs (and the previous window's), failures by verdict and over
    time, the funnel, and the top applications and customers by failures.

    Each read of the `calls` view resolves the latest row of every call, so it is read once: one
    GROUP BY GROUPING SETS counts the calls of the window and of the one before it by verdict, by
    time bucket, by application and by customer (a few thousand rows) into a temporary table,
    and every figure is summed from those counts. The results equal the single-figure functions
    (`kpis`, `funnel`, `top_failures`, ...), which read `calls` directly.
    """
    if bucket <= timedelta(0):
        raise QueryError(f"bucket must be positive, got {bucket}")
    previous = flt.previous()
    if CALLS not in views(con):
        empty = WindowCounts(0, 0, 0, 0)
        return Overview(
            Kpis(empty, None if previous is None else empty),
            [],
            _funnel_steps({}),
            _empty_top("application_id"),
            _empty_top("customer_id"),
            _empty_series(),
            bucket,
        )
    where, params = _where(replace(flt, start=previous.start if previous else flt.start))
    current = "first_seen_at >= ?" if flt.start is not None else "true"
    current_params = [_utc(flt.start)] if flt.start is not None else []
    keys = "cur, verdict, failure_stage, is_final, failed"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {OVERVIEW_COUNTS} AS "
        "SELECT CASE WHEN grouping(bucket) = 0 THEN 'bucket' WHEN grouping(application_id) = 0 "
        "THEN 'application_id' WHEN grouping(customer_id) = 0 THEN 'customer_id' ELSE 'all' END AS part, "
        f"bucket, application_id, customer_id, {keys}, count(*) AS n FROM ("
        f"SELECT {current} AS cur, time_bucket(to_microseconds(?), first_seen_at::TIMESTAMPTZ) AS bucket, "
        "application_id, customer_id, verdict, coalesce(failure_stage, 'none') AS failure_stage, "
        f"is_final, {_FAILED} AS failed FROM calls WHERE {where}) "
        f"GROUP BY GROUPING SETS (({keys}), (bucket, {keys}), "
        f"(application_id, {keys}), (customer_id, {keys}))",
        [*current_params, int(bucket / timedelta(microseconds=1)), *params],
    )
    try:
        return _overview_from_counts(con, previous is not None, top, bucket)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {OVERVIEW_COUNTS}")


def _overview_from_counts(
    con: duckdb.DuckDBPyConnection, has_previous: bool, top: int, bucket: timedelta
) -> Overview:
    counts = f"FROM {OVERVIEW_COUNTS} WHERE part = ?"

    def window(cur: bool) -> WindowCounts:
        calls, final, failures, in_progress = _one(
            con,
            "SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE is_final), 0), "
            "coalesce(sum(n) FILTER (WHERE failed), 0), coalesce(sum(n) FILTER (WHERE NOT is_final), 0) "
            f"{counts} AND cur = ?",
            ["all", cur],
        )
        return WindowCounts(int(calls), int(final), int(failures), int(in_progress))

    by_verdict = [
        (str(v), str(stage), int(n))
        for v, stage, n in con.execute(
            f"SELECT verdict, failure_stage, sum(n) AS total {counts} AND cur AND failed "
            "GROUP BY ALL ORDER BY total DESC, verdict",
            ["all"],
        ).fetchall()
    ]
    lost = con.execute(
        f"SELECT failure_stage, sum(n) {counts} AND cur AND is_final AND verdict <> 'no_stream' GROUP BY ALL",
        ["all"],
    ).fetchall()
    tops = {}
    for by in ("application_id", "customer_id"):
        per_verdict = (
            f"SELECT {by}, verdict, is_final, failed, n FROM {OVERVIEW_COUNTS} WHERE part = ? AND cur"
        )
        tops[by] = _frame(con, _top_sql(by, per_verdict), [by, top])
    series = _frame(
        con,
        f"SELECT bucket, verdict, sum(n)::BIGINT AS calls {counts} AND cur AND failed "
        "GROUP BY ALL ORDER BY bucket, verdict",
        ["bucket"],
    )
    return Overview(
        Kpis(window(True), window(False) if has_previous else None),
        by_verdict,
        _funnel_steps({str(stage): int(n) for stage, n in lost}),
        tops["application_id"],
        tops["customer_id"],
        series,
        bucket,
    )


def spans_without_call_id(con: duckdb.DuckDBPyConnection) -> int:
    """Stored spans that carry no call id (counted and shown, never dropped)."""
    if "spans_raw" not in views(con):
        return 0
    (count,) = _one(con, "SELECT count(*) FROM spans_raw WHERE call_id IS NULL")
    return int(count)


# ---- calls table -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallsPage:
    """One page of the calls table: the rows, how many calls matched, and how the search was read."""

    rows: pl.DataFrame
    total: int
    searched_phone: bool = False
    """The search text was read as a phone number and matched through its keyed hash."""
    note: str | None = None


def phone_hash_call_ids_sql(con: duckdb.DuckDBPyConnection) -> str:
    """SQL selecting the call ids whose from/to hash equals `?` (bound twice)."""
    if {"from_hash", "to_hash"} <= set(columns(con, "calls")):
        return "SELECT call_id FROM calls WHERE from_hash = ? OR to_hash = ?"
    # The collectors put the hashes on answer_url and webhook spans (docs/spans.md). Search the raw
    # attribute text: a LIKE on one column is a plain scan, far cheaper than parsing JSON per span.
    return (
        "SELECT DISTINCT call_id FROM spans_raw WHERE call_id IS NOT NULL "
        "AND (contains(attributes, ?) OR contains(attributes, ?))"
    )


def search_calls(
    con: duckdb.DuckDBPyConnection,
    flt: CallFilter,
    text: str = "",
    *,
    pii_key: str | None = None,
    sort: str = "failures first",
    limit: int = 500,
) -> CallsPage:
    """Calls matching the filter and a free-text search, sorted, at most `limit` rows.

    The search matches a substring of call_id, customer_id or application_id, or a verdict name,
    case-insensitively. Text that looks like a phone number is matched through its keyed hash
    (`hmac-sha256:` of the E.164 number) when `pii_key` is set; numbers are never stored in clear.
    """
    import polars as pl

    from collectors.privacy import hash_phone

    if sort not in CALL_SORTS:
        raise QueryError(f"unknown sort {sort!r}; use one of {', '.join(CALL_SORTS)}")
    present = columns(con, "calls")
    shown = [c for c in CALL_LIST_COLUMNS if c in present]
    if not present:
        return CallsPage(pl.DataFrame(schema=dict.fromkeys(CALL_LIST_COLUMNS, pl.String)), 0)
    where, params = _where(flt)
    text = text.strip()
    searched_phone = False
    note = None
    if text:
        if _PHONE_QUERY.match(text) and sum(ch.isdigit() for ch in text) >= 7:
            if pii_key:
                digest = hash_phone(text, pii_key)
                sql = phone_hash_call_ids_sql(con)
                if "spans_raw" in sql:
                    digest = json.dumps(digest)  # the quoted JSON string, so a prefix cannot match
                where += f" AND call_id IN ({sql})"
                params += [digest, digest]
                searched_phone = True
            else:
                note = (
                    "Phone numbers are stored only as keyed hashes. Set CALLSCOPE_PII_KEY (the key the "
                    "collectors use) to search by number."
                )
                where += " AND false"
        else:
            pattern = f"%{_like_escape(text)}%"
            where += (
                " AND (call_id ILIKE ? ESCAPE '\\' OR customer_id ILIKE ? ESCAPE '\\' "
                "OR application_id ILIKE ? ESCAPE '\\' OR verdict ILIKE ? ESCAPE '\\')"
            )
            params += [pattern] * 4
    (total,) = _one(con, f"SELECT count(*) FROM calls WHERE {where}", params)
    rows = _frame(
        con,
        f"SELECT {', '.join(shown)} FROM calls WHERE {where} ORDER BY {CALL_SORTS[sort]} LIMIT ?",
        [*params, limit],
    )
    return CallsPage(rows, int(total), searched_phone, note)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# ---- call detail -----------------------------------------------------------------------------


def call_row(con: duckdb.DuckDBPyConnection, call_id: str) -> dict[str, Any] | None:
    """The call's `calls` row as a dict, or None."""
    return _row_of(_call_row_table(con, call_id))


def _row_of(table: pa.Table | None) -> dict[str, Any] | None:
    return table.to_pylist()[0] if table is not None and table.num_rows else None


def call_events(
    con: duckdb.DuckDBPyConnection, call_id: str, call: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """The call's `call_events` rows in timeline order. With the call's `calls` row (`call_row`),
    only the spans around the call are read (`pipeline.queries.call_events_queries`)."""
    import polars as pl

    from pipeline.queries import call_events_queries

    if "call_events" not in views(con):
        return pl.DataFrame(
            schema={
                "call_id": pl.String,
                "ts": pl.Datetime("us", "UTC"),
                "source": pl.String,
                "event": pl.String,
                "detail": pl.String,
            }
        )
    if "spans_raw" in views(con) and {"ord", "span_id"} <= set(columns(con, "call_events")):
        for query in call_events_queries(call_id, call):
            frame = con.sql(query.sql, params=query.params).pl()
            if query.complete(frame["span_id"].to_list()):
                break
        return frame
    return _frame(con, "SELECT * FROM call_events WHERE call_id = ? ORDER BY ts", [call_id])


def _events_schema() -> dict[str, Any]:
    """The `call_events` columns and their Polars types, as `call_detail` returns them."""
    import polars as pl

    utc = pl.Datetime("us", "UTC")
    return {
        "call_id": pl.String,
        "ts": utc,
        "source": pl.String,
        "event": pl.String,
        "detail": pl.String,
        "recorded_at": utc,
        "span_id": pl.String,
        "ord": pl.Int16,
    }


def call_spans(
    con: duckdb.DuckDBPyConnection, call_id: str, call: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The call's stored spans (one row per span id, latest ingested copy, as in `spans`), oldest
    first. See `call_span_table`."""
    table = call_span_table(con, call_id, call)
    return [] if table is None else table.to_pylist()


def call_span_table(
    con: duckdb.DuckDBPyConnection, call_id: str, call: Mapping[str, Any] | None = None
) -> pa.Table | None:
    """The call's stored spans as an Arrow table (None without a `spans_raw` view), oldest first.

    Reads `spans_raw` filtered by the call's derived trace id and de-duplicates here: the `spans`
    view de-duplicates over every stored span before any filter. Given the call's `calls` row, it
    first reads only spans that start in its `pipeline.queries.span_window`: the date partitions
    and row groups around it. When that finds fewer spans than the build counted, it reads them all.
    """
    from pipeline.queries import epoch_ns, span_window

    if "spans_raw" not in views(con):
        return None
    trace_id = call_trace_id_hex(call_id)
    window = span_window(call)
    if window is not None:
        low, high = window
        where = "trace_id = ? AND start_ns BETWEEN ? AND ?"
        params: list[Any] = [trace_id, epoch_ns(low), epoch_ns(high)]
        if "date" in columns(con, "spans_raw"):
            where += " AND date BETWEEN ? AND ?"
            params += [low.date(), high.date()]
        spans = _span_table_where(con, where, params)
        expected = (call or {}).get("span_count")
        if spans.num_rows and (not isinstance(expected, int) or spans.num_rows >= expected):
            return spans
    return _span_table_where(con, "trace_id = ?", [trace_id])


def _span_table_where(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> pa.Table:
    relation = con.sql(
        "SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY span_id "
        f"ORDER BY {SPAN_COPY_ORDER}) AS rn FROM spans_raw WHERE {where}) "
        "WHERE rn = 1 ORDER BY start_ns, span_id",
        params=params,
    )
    assert relation is not None  # a SELECT always gives a relation
    return relation.to_arrow_table()


@dataclass(frozen=True, slots=True)
class CallDetail:
    """What the Call detail page shows of one call."""

    call: dict[str, Any] | None
    """The `calls` row, or None when the call is not built yet."""
    events: pl.DataFrame
    """The `call_events` rows in timeline order."""
    spans: list[dict[str, Any]]
    """The stored spans, oldest first (`call_spans`)."""


def call_detail(con: duckdb.DuckDBPyConnection, call_id: str) -> CallDetail:
    """One call's `calls` row, spans and `call_events` rows, reading its spans once.

    The `call_events` view derives its rows from the spans; here the same SQL
    (`pipeline.tables.call_events_view_sql` over `pipeline.events.call_points_sql`) runs over the
    spans and the calls row already read, registered on the connection for the query, instead of
    scanning `spans_raw` a second time (at 1M calls: 62 ms in all instead of 134).
    """
    import uuid

    import polars as pl

    from pipeline.events import call_points_sql
    from pipeline.tables import call_events_view_sql

    call_table = _call_row_table(con, call_id)
    call = _row_of(call_table)
    spans = call_span_table(con, call_id, call)
    if spans is None or call_table is None:
        return CallDetail(call, call_events(con, call_id, call), [] if spans is None else spans.to_pylist())
    names = (f"_detail_spans_{uuid.uuid4().hex}", f"_detail_call_{uuid.uuid4().hex}")
    con.register(names[0], spans)
    con.register(names[1], call_table)
    try:
        sql = call_events_view_sql(f"({call_points_sql(names[0])})", names[1])
        # execute + fetchall: `con.sql(...)` binds this large statement twice (~12 ms more).
        rows = con.execute(f"SELECT * FROM ({sql}) ORDER BY ts, ord, span_id").fetchall()
    finally:
        for name in names:
            con.unregister(name)
    events = pl.DataFrame(rows, schema=_events_schema(), orient="row")
    return CallDetail(call, events, spans.to_pylist())


def _call_row_table(con: duckdb.DuckDBPyConnection, call_id: str) -> pa.Table | None:
    if "calls" not in views(con):
        return None
    relation = con.sql("SELECT * FROM calls WHERE call_id = ? LIMIT 1", params=[call_id])
    assert relation is not None
    return relation.to_arrow_table()


#: The SQL page's examples: title -> a read-only query over the views.
EXAMPLE_QUERIES: dict[str, str] = {
    "Failure rate by application": """SELECT application_id,
       count(*) FILTER (WHERE is_final) AS final_calls,
       count(*) FILTER (WHERE is_final AND failure_stage <> 'none') AS failures,
       round(100.0 * failures / nullif(final_calls, 0), 1) AS failure_rate_pct
FROM calls
GROUP BY application_id
ORDER BY failure_rate_pct DESC NULLS LAST, failures DESC""",
    "Calls dropped in the last hour": """SELECT call_id, first_seen_at, application_id, customer_id,
       close_code, closed_by, reason
FROM calls
WHERE verdict = 'stream_dropped' AND first_seen_at >= now() - INTERVAL 1 HOUR
ORDER BY first_seen_at DESC""",
    "Slowest answer_url responses": """SELECT call_id, application_id, answer_url_status,
       round(answer_url_latency_ms) AS latency_ms, verdict
FROM calls
WHERE answer_url_latency_ms IS NOT NULL
ORDER BY answer_url_latency_ms DESC
LIMIT 20""",
    "Verdicts in the last 15 minutes": """SELECT verdict, failure_stage, count(*) AS calls
FROM calls
WHERE first_seen_at >= now() - INTERVAL 15 MINUTE
GROUP BY ALL
ORDER BY calls DESC""",
    "Receivers closed with an error code": """SELECT close_code, closed_by, count(*) AS calls,
       any_value(call_id) AS example
FROM calls
WHERE close_code IS NOT NULL AND close_code <> 1000
GROUP BY ALL
ORDER BY calls DESC""",
    "Spans without a call id": """SELECT source, name, service_name, count(*) AS spans
FROM spans
WHERE call_id IS NULL
GROUP BY ALL
ORDER BY spans DESC""",
}
