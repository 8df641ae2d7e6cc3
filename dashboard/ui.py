"""Layout helpers shared by the pages: settings, the read-only connection, the sidebar, verdict colours.

Layout only: every number shown comes from `pipeline.dashboard_queries`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NoReturn

import streamlit as st

from pipeline.dashboard_queries import CallFilter, FilterOptions
from pipeline.settings import Settings

if TYPE_CHECKING:
    import duckdb

#: One colour per verdict, the same on every chart: reds and oranges for the early (configuration)
#: stages, purples for the stream, blue-greys for the lifecycle; green ok, grey no_stream, blue in_progress.
VERDICT_COLOURS: dict[str, str] = {
    "answer_url_failed": "#991b1b",
    "invalid_action": "#dc2626",
    "stream_not_connected": "#ea580c",
    "no_media": "#d97706",
    "stream_dropped": "#c026d3",
    "receiver_error": "#7c3aed",
    "webhook_missing": "#0e7490",
    "call_failed": "#475569",
    "ok": "#16a34a",
    "no_stream": "#9ca3af",
    "in_progress": "#2563eb",
}

#: What each verdict means, in plain words (issue 4's table).
VERDICT_MEANINGS: dict[str, str] = {
    "answer_url_failed": "the answer_url errored, timed out or returned non-JSON",
    "invalid_action": "MiniVoice refused the start_stream action",
    "stream_not_connected": "a valid start_stream, but the receiver never saw the connection",
    "no_media": "connected, but no media arrived",
    "stream_dropped": "the stream ended before the call did, without a stop",
    "receiver_error": "the receiver recorded errors handling the stream",
    "webhook_missing": "no call.completed arrived in time",
    "call_failed": "the call itself failed (busy, no-answer, canceled, failed)",
    "ok": "every step consistent",
    "no_stream": "answer_url asked for no stream (not a failure)",
    "in_progress": "not final yet",
}

TIME_RANGES: dict[str, timedelta | None] = {
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "All time": None,
}
DEFAULT_TIME_RANGE = "Last 24 hours"


def settings() -> Settings:
    """This run's settings. Read per script run (cheap), so a changed environment needs no restart."""
    return Settings.from_environ()


def _close(con: duckdb.DuckDBPyConnection) -> None:
    con.close()


@st.cache_resource(ttl=15, show_spinner=False, on_release=_close)
def _views(data_dir: str) -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB with the data directory's views, shared by every session.

    Defining the views globs the data directory (tens of ms); the views themselves glob the files
    at query time, so new segments and builds show up at once. Re-made every 15 s, which is when
    a table's first file (a view's definition changing) shows up.
    """
    from pipeline.dashboard_queries import open_views

    return open_views(data_dir)


@contextlib.contextmanager
def connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection over the data directory's views for this run, closed after it.

    A cursor of the shared connection: its own session (time zone, temporary tables), the same views.
    """
    import duckdb

    try:
        cursor = _views(str(settings().data_dir)).cursor()
    except duckdb.Error as exc:  # defining the views reads each table's Parquet schema
        _unreadable(exc)
    try:
        cursor.execute("SET TimeZone = 'UTC'")
        yield cursor
    except duckdb.Error as exc:
        _unreadable(exc)
    finally:
        cursor.close()


def _unreadable(exc: Exception) -> NoReturn:
    """Say plainly that the data directory could not be read, and stop this run."""
    # A file renamed away by compaction between the glob and the read, a truncated file, a table
    # written by another version: a sentence, not a traceback. Forget the views: they are re-made.
    _views.clear()
    st.error(
        f"Could not read the data directory `{settings().data_dir}`: {exc}\n\n"
        "If a build or a compaction is running, reload in a few seconds.",
        icon=":material/error:",
    )
    st.stop()


def filter_options(data_dir: str) -> FilterOptions:
    """The sidebar's choices (none when the data directory cannot be read: the page says why)."""
    import duckdb

    try:
        return _filter_options(data_dir)
    except duckdb.Error:
        return FilterOptions()


@st.cache_data(ttl=60, show_spinner=False)
def _filter_options(data_dir: str) -> FilterOptions:
    """One pass over `calls`, kept a minute (new values are rare)."""
    from pipeline.dashboard_queries import filter_options as query
    from pipeline.dashboard_queries import open_views

    with open_views(data_dir) as con:
        return query(con)


def sidebar_filters(options: FilterOptions) -> None:
    """Draw the sidebar filters: time range, application, customer, direction, verdict.

    Their values live in the session (`persist_state="session"`), so they survive page switches;
    read them with `current_filter`.
    """
    with st.sidebar:
        st.header("Filters")
        st.selectbox("Time range", list(TIME_RANGES), index=3, key="f_range", persist_state="session")
        for label, key, values in (
            ("Application", "f_apps", options.application_ids),
            ("Customer", "f_customers", options.customer_ids),
            ("Direction", "f_directions", options.directions),
            ("Verdict", "f_verdicts", options.verdicts),
        ):
            st.multiselect(label, _offer(key, values), key=key, persist_state="session")


def _offer(key: str, options: list[str]) -> list[str]:
    """A multiselect's options, plus any chosen value no longer in the data (so it stays chosen)."""
    chosen = [v for v in st.session_state.get(key) or [] if v not in options]
    return [*options, *chosen]


def current_filter(now: datetime) -> tuple[CallFilter, str]:
    """The sidebar's filter as of `now`, and the time range's label."""
    state = st.session_state
    label = state.get("f_range") or DEFAULT_TIME_RANGE
    window = TIME_RANGES.get(label)
    flt = CallFilter(
        start=None if window is None else now - window,
        end=None if window is None else now,
        application_ids=tuple(state.get("f_apps") or ()),
        customer_ids=tuple(state.get("f_customers") or ()),
        directions=tuple(state.get("f_directions") or ()),
        verdicts=tuple(state.get("f_verdicts") or ()),
    )
    return flt, label


def live_controls() -> float | None:
    """The live auto-refresh toggle; returns the refresh interval in seconds, or None when off."""
    with st.sidebar:
        st.divider()
        live = st.toggle(
            "Live (auto-refresh)",
            key="f_live",
            persist_state="session",
            help="Re-run the queries every few seconds, as new calls are built.",
        )
        every = st.select_slider(
            "Every (seconds)", options=[5, 10, 30, 60], value=10, key="f_every", persist_state="session"
        )
    return float(every) if live else None


def now() -> datetime:
    """The wall clock, in UTC (the pages' one clock read)."""
    return datetime.now(UTC)


def how_to_get_data(data_dir: str) -> str:
    """Markdown shown on an empty data directory: how to fill it."""
    return f"""
**No calls in `{data_dir}` yet.** To see something here:

1. **Try the demo** (simulated MiniVoice calls of every failure scenario, end to end):
   `callscope demo --data {data_dir}`
2. **Or record your own calls**: run `callscope ingest --data {data_dir}` (OTLP/HTTP on :4318), point the
   collectors in your answer_url app, stream receiver and webhook app at it
   (`OTEL_EXPORTER_OTLP_ENDPOINT=http://<this host>:4318`), and keep the timelines built with
   `callscope build --data {data_dir} --follow`.

This page refreshes itself when calls arrive if you turn on **Live** in the sidebar.
"""
