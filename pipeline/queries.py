"""Questions people on call ask, as functions over a connection with the views defined.

Used by `callscope triage` and `callscope check`; the dashboard can call them too. Each takes a
DuckDB connection that has the views (`DataDir.connect_readonly()`, or `pipeline.sql`'s
sandboxed one) and returns plain Python values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipeline import tables
from pipeline.rules import FAILURE_VERDICTS, IN_PROGRESS

if TYPE_CHECKING:
    import duckdb

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class DurationError(ValueError):
    """A duration such as `15m` could not be read. The message shows the accepted forms."""


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `1d` (a bare number is minutes) to a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise DurationError(f"{text!r} is not a duration: use a number and a unit, e.g. 90s, 15m, 2h or 1d")
    value = float(match.group(1))
    unit = (match.group(2) or "m").lower()
    if value <= 0:
        raise DurationError(f"{text!r} must be longer than zero")
    return timedelta(seconds=value * _UNITS[unit])


def _records(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or [])
    columns = [d[0] for d in cursor.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def call_row(con: duckdb.DuckDBPyConnection, call_id: str) -> dict[str, Any] | None:
    """The call's `calls` row, or None."""
    rows = _records(con, "SELECT * FROM calls WHERE call_id = ?", [call_id])
    return rows[0] if rows else None


#: How far beyond the call's first and last activity its spans are looked for first. Segments are
#: written in arrival order, so their row groups cover narrow time ranges that DuckDB skips. A
#: receiver clock off by more is caught by the span count check, which then reads them all.
SPAN_WINDOW = timedelta(minutes=10)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ns(moment: datetime) -> int:
    """Unix nanoseconds of a datetime (naive means UTC)."""
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def span_window(call: Mapping[str, Any] | None) -> tuple[datetime, datetime] | None:
    """Where a call's spans are looked for first, from its `calls` row: its first and last
    activity, widened by SPAN_WINDOW (None without those times)."""
    first = (call or {}).get("first_seen_at")
    last = (call or {}).get("last_seen_at") or (call or {}).get("completed_at") or first
    if not (isinstance(first, datetime) and isinstance(last, datetime)):
        return None
    return first - SPAN_WINDOW, last + SPAN_WINDOW


@dataclass(frozen=True, slots=True)
class EventsQuery:
    """One way to read a call's `call_events` rows: SQL with named parameters, and how many
    distinct spans its rows must come from to be complete (None: always complete)."""

    sql: str
    params: dict[str, Any]
    spans_expected: int | None = None

    def complete(self, span_ids: Iterable[str | None]) -> bool:
        """Whether rows with these span ids hold every span the build counted for the call."""
        if self.spans_expected is None:
            return True
        return len({s for s in span_ids if s is not None}) >= self.spans_expected


def call_events_queries(
    call_id: str, call: Mapping[str, Any] | None = None, columns: str = "*"
) -> list[EventsQuery]:
    """The queries for one call's `call_events` rows in timeline order, to try in turn until one
    is complete (`EventsQuery.complete`).

    Given the call's `calls` row, the first reads only spans that start in its `span_window`
    (their date partitions and row groups); it is incomplete when it finds fewer spans than the
    build counted (a receiver clock off by hours). The last reads all of the call's spans, as the
    `call_events` view does."""
    order = " ORDER BY ts, ord, span_id"
    everything = tables.one_call_events_sql(windowed=False)
    queries = [EventsQuery(f"SELECT {columns} FROM ({everything}){order}", {"call_id": call_id})]
    window = span_window(call)
    expected = (call or {}).get("span_count")
    if window is not None and isinstance(expected, int):
        low, high = window
        params = {
            "call_id": call_id,
            "low_ns": epoch_ns(low),
            "high_ns": epoch_ns(high),
            "low_day": low.date(),
            "high_day": high.date(),
        }
        windowed = tables.one_call_events_sql(windowed=True)
        queries.insert(0, EventsQuery(f"SELECT {columns} FROM ({windowed}){order}", params, expected))
    return queries


def call_timeline(
    con: duckdb.DuckDBPyConnection, call_id: str, call: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The call's timeline points in order (`ts` on the webhook clock; pipeline points last at ties).
    Pass the call's `calls` row to read only the spans around it (`call_events_queries`)."""
    rows: list[dict[str, Any]] = []
    for query in call_events_queries(call_id, call, "ts, source, event, detail, recorded_at, span_id"):
        cursor = con.execute(query.sql, query.params)
        names = [d[0] for d in cursor.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        if query.complete(r["span_id"] for r in rows):
            break
    return rows


def call_span_count(con: duckdb.DuckDBPyConnection, call_id: str) -> int:
    """How many stored spans carry the call id (spans not built into a timeline yet count too)."""
    rows = con.execute("SELECT count(*) FROM spans_raw WHERE call_id = ?", [call_id]).fetchall()
    return int(rows[0][0]) if rows else 0


def close_matches(con: duckdb.DuckDBPyConnection, call_id: str, limit: int = 5) -> list[str]:
    """Call ids that look like `call_id` (a typo, a cut-off paste, another prefix)."""
    rows = con.execute(
        "SELECT call_id FROM (SELECT call_id, "
        "greatest(jaro_winkler_similarity(call_id, $q), "
        "CASE WHEN contains(call_id, $q) OR contains($q, call_id) THEN 0.95 ELSE 0 END) AS score "
        "FROM calls) WHERE score >= 0.8 ORDER BY score DESC, call_id LIMIT $n",
        {"q": call_id, "n": limit},
    ).fetchall()
    return [r[0] for r in rows]


def unattributed_count(con: duckdb.DuckDBPyConnection, since: datetime | None = None) -> int:
    """Spans stored without a call id (optionally ingested since a time)."""
    if since is None:
        rows = con.execute("SELECT count(*) FROM unattributed_spans").fetchall()
    else:
        rows = con.execute(
            "SELECT count(*) FROM unattributed_spans WHERE ingested_at >= ?", [since]
        ).fetchall()
    return int(rows[0][0]) if rows else 0


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Calls seen in a window, by verdict, and the failure rate among the judged ones."""

    since: datetime
    until: datetime
    by_verdict: dict[str, int] = field(default_factory=dict)
    unattributed: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_verdict.values())

    @property
    def judged(self) -> int:
        """Calls with a verdict other than in_progress (the denominator of the failure rate)."""
        return self.total - self.by_verdict.get(IN_PROGRESS, 0)

    @property
    def failures(self) -> int:
        return sum(n for v, n in self.by_verdict.items() if v in FAILURE_VERDICTS)

    @property
    def failure_rate(self) -> float:
        """Failures over judged calls; 0.0 when nothing was judged."""
        return self.failures / self.judged if self.judged else 0.0


def verdict_breakdown(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime) -> Breakdown:
    """Calls whose last activity falls in [since, until), counted by verdict."""
    rows = con.execute(
        "SELECT verdict, count(*) FROM calls WHERE last_seen_at >= ? AND last_seen_at < ? GROUP BY verdict",
        [since, until],
    ).fetchall()
    return Breakdown(
        since=since,
        until=until,
        by_verdict={str(v): int(n) for v, n in rows},
        unattributed=unattributed_count(con, since),
    )
