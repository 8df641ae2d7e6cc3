"""The dashboard's queries, without Streamlit, on a dataset built by the real pipeline.

The expected numbers are computed here in plain Python from the `calls` rows the build wrote (one
call per simulator scenario), so each test checks the query, not the verdict rules.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from collectors.identity import call_trace_id_hex
from pipeline import call_story as story
from pipeline import dashboard_queries as q
from tests.dashboard.fixtures import FROM_NUMBER, PII_KEY, DemoData, demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return demo_data(tmp_path_factory)


@pytest.fixture
def con(demo: DemoData) -> Iterator[duckdb.DuckDBPyConnection]:
    with q.open_views(demo.data_dir) as connection:
        yield connection


def _failed(row: dict[str, object]) -> bool:
    return bool(row["is_final"]) and row["failure_stage"] not in (None, "none")


def _now() -> datetime:
    return datetime.now(UTC)


def test_summary_counts_calls_and_spans(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    summary = q.data_summary(con)
    assert summary.calls == len(demo.rows)
    assert summary.spans > summary.calls  # several spans per call
    assert not summary.empty
    assert summary.first_seen is not None and summary.last_seen is not None
    assert summary.first_seen <= summary.last_seen


def test_empty_data_dir_is_empty_not_an_error(tmp_path: Path) -> None:
    with q.open_views(tmp_path) as con:
        summary = q.data_summary(con)
        assert summary.empty and summary.calls == 0 and summary.spans == 0
        assert q.kpis(con, q.CallFilter()).current.calls == 0
        assert [step.calls for step in q.funnel(con, q.CallFilter())] == [0] * len(q.FUNNEL_STEPS)
        assert q.failures_over_time(con, q.CallFilter(), timedelta(minutes=5)).height == 0
        assert q.top_failures(con, q.CallFilter(), "customer_id").height == 0
        assert q.search_calls(con, q.CallFilter(), "call").total == 0
        assert q.call_row(con, "call_123") is None
        assert q.call_spans(con, "call_123") == []
        assert q.filter_options(con) == q.FilterOptions()


def test_kpis_match_the_calls_rows(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    rows = list(demo.rows.values())
    kpis = q.kpis(con, q.last(timedelta(hours=1), _now()))
    assert kpis.current.calls == len(rows)
    assert kpis.current.final == sum(1 for r in rows if r["is_final"])
    assert kpis.current.failures == sum(1 for r in rows if _failed(r))
    assert kpis.current.in_progress == sum(1 for r in rows if not r["is_final"])
    assert kpis.current.failures > 0
    assert kpis.current.failure_rate == pytest.approx(kpis.current.failures / kpis.current.final)
    # Nothing happened in the hour before: every change is the whole current figure.
    assert kpis.previous is not None and kpis.previous.calls == 0
    assert kpis.delta("calls") == len(rows)
    assert kpis.delta("failure_rate") is None  # no final call before: no rate to compare with


def test_kpis_of_an_earlier_window_are_empty(con: duckdb.DuckDBPyConnection) -> None:
    kpis = q.kpis(con, q.last(timedelta(minutes=15), _now() - timedelta(days=1)))
    assert kpis.current.calls == 0 and kpis.current.failure_rate is None


def test_all_time_has_no_previous_window(con: duckdb.DuckDBPyConnection) -> None:
    assert q.CallFilter().previous() is None
    assert q.kpis(con, q.CallFilter()).previous is None


def test_previous_window_is_the_same_length_just_before() -> None:
    end = datetime(2026, 5, 29, 12, 0, tzinfo=UTC)
    flt = q.last(timedelta(hours=1), end, verdicts=("no_media",))
    previous = flt.previous()
    assert previous is not None
    assert (previous.start, previous.end) == (end - timedelta(hours=2), end - timedelta(hours=1))
    assert previous.verdicts == ("no_media",)


def test_filters_narrow_every_figure(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    dropped = [r for r in demo.rows.values() if r["verdict"] == "stream_dropped"]
    assert dropped
    flt = q.CallFilter(verdicts=("stream_dropped",))
    assert q.kpis(con, flt).current.failures == len(dropped)
    page = q.search_calls(con, flt)
    assert page.total == len(dropped)
    assert set(page.rows["verdict"].to_list()) == {"stream_dropped"}
    nobody = q.CallFilter(application_ids=("app_that_does_not_exist",))
    assert q.kpis(con, nobody).current.calls == 0
    app = next(iter(demo.rows.values()))["application_id"]
    direction = next(iter(demo.rows.values()))["direction"]
    same = q.CallFilter(application_ids=(app,), directions=(direction,))
    assert q.kpis(con, same).current.calls == sum(
        1 for r in demo.rows.values() if r["application_id"] == app and r["direction"] == direction
    )


def test_filter_options_offer_what_the_data_holds(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    options = q.filter_options(con)
    rows = list(demo.rows.values())
    assert set(options.verdicts) == {r["verdict"] for r in rows}
    assert set(options.application_ids) == {r["application_id"] for r in rows}
    assert set(options.customer_ids) == {r["customer_id"] for r in rows}
    # Most frequent first.
    counts = Counter(r["verdict"] for r in rows)
    assert counts[options.verdicts[0]] == max(counts.values())


def test_failures_over_time_add_up_by_verdict(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    series = q.failures_over_time(con, q.CallFilter(), timedelta(minutes=1))
    expected = Counter(r["verdict"] for r in demo.rows.values() if _failed(r))
    got: Counter[str] = Counter()
    for verdict, calls in zip(series["verdict"].to_list(), series["calls"].to_list(), strict=True):
        got[verdict] += calls
    assert got == expected
    assert all(bucket.second == 0 for bucket in series["bucket"].to_list())
    with pytest.raises(q.QueryError):
        q.failures_over_time(con, q.CallFilter(), timedelta(0))


def test_failures_by_verdict_most_frequent_first(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    by_verdict = q.failures_by_verdict(con, q.CallFilter())
    expected = Counter(r["verdict"] for r in demo.rows.values() if _failed(r))
    assert {v: n for v, _, n in by_verdict} == dict(expected)
    assert [n for _, _, n in by_verdict] == sorted((n for _, _, n in by_verdict), reverse=True)
    stages = {r["verdict"]: r["failure_stage"] for r in demo.rows.values()}
    assert all(stage == stages[verdict] for verdict, stage, _ in by_verdict)


def test_funnel_follows_the_debug_order(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    steps = q.funnel(con, q.CallFilter())
    assert [s.step for s in steps] == [
        "answered",
        "valid action",
        "connected",
        "media flowing",
        "clean end",
        "completed",
    ]
    base = [r for r in demo.rows.values() if r["is_final"] and r["verdict"] != "no_stream"]
    lost = Counter(r["failure_stage"] for r in base)
    remaining = len(base)
    for step in steps:
        remaining -= lost[step.stage]
        assert step.lost == lost[step.stage], step
        assert step.calls == remaining, step
        assert step.share == pytest.approx(remaining / len(base))
    # What is left at the end went through every step: the ok calls.
    assert steps[-1].calls == sum(1 for r in base if r["verdict"] == "ok")
    assert steps[2].lost == sum(1 for r in base if r["verdict"] == "stream_not_connected")


def test_top_failures_by_application_and_customer(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    rows = list(demo.rows.values())
    for by in ("application_id", "customer_id"):
        top = q.top_failures(con, q.CallFilter(), by)
        failures = Counter(r[by] for r in rows if _failed(r))
        assert dict(zip(top[by].to_list(), top["failures"].to_list(), strict=True)) == dict(failures)
        first = top.row(0, named=True)
        verdicts = Counter(r["verdict"] for r in rows if _failed(r) and r[by] == first[by])
        assert verdicts[first["top_verdict"]] == max(verdicts.values())
        final = sum(1 for r in rows if r[by] == first[by] and r["is_final"])
        assert first["failure_rate"] == pytest.approx(first["failures"] / final)
    with pytest.raises(q.QueryError, match="application_id or customer_id"):
        q.top_failures(con, q.CallFilter(), "verdict; DROP VIEW calls")


def test_headline_names_the_step_and_who(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    flt = q.CallFilter()
    counts = q.kpis(con, flt).current
    by_verdict = q.failures_by_verdict(con, flt)
    top = q.top_failures(con, flt, "application_id")
    text = q.headline(counts, by_verdict, top.row(0, named=True))
    assert f"{counts.failures} of {counts.final} final calls failed" in text
    assert f"**{by_verdict[0][1]}**" in text and by_verdict[0][0] in text
    assert str(top.row(0, named=True)["application_id"]) in text
    assert q.headline(q.WindowCounts(0, 0, 0, 0), [], None) == "No calls in this window."
    assert "No failures" in q.headline(q.WindowCounts(5, 5, 0, 0), [], None)


def test_search_by_call_id_verdict_and_customer(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    call_id = demo.call("invalid_track")
    page = q.search_calls(con, q.CallFilter(), call_id[-8:].upper())  # substring, any case
    assert page.rows["call_id"].to_list() == [call_id]
    page = q.search_calls(con, q.CallFilter(), "no_media")
    assert page.rows["call_id"].to_list() == [demo.call("no_media")]
    customer = demo.row("happy")["customer_id"]
    assert q.search_calls(con, q.CallFilter(), customer).total == sum(
        1 for r in demo.rows.values() if r["customer_id"] == customer
    )
    # LIKE wildcards in the search text are literal characters.
    assert q.search_calls(con, q.CallFilter(), "%").total == 0
    assert q.search_calls(con, q.CallFilter(), "_").total == len(demo.rows)  # every call id has one


def test_search_by_phone_number_through_the_keyed_hash(
    demo: DemoData, con: duckdb.DuckDBPyConnection
) -> None:
    spaced = FROM_NUMBER[:2] + " (" + FROM_NUMBER[2:5] + ") " + FROM_NUMBER[5:8] + "-" + FROM_NUMBER[8:]
    page = q.search_calls(con, q.CallFilter(), spaced, pii_key=PII_KEY)
    assert page.searched_phone
    # Every simulated call has this caller; each had a webhook or answer_url span carrying the hash.
    assert page.total == len(demo.rows)
    wrong_key = q.search_calls(con, q.CallFilter(), FROM_NUMBER, pii_key="another key")
    assert wrong_key.total == 0 and wrong_key.searched_phone
    other_number = q.search_calls(con, q.CallFilter(), "+15550000000", pii_key=PII_KEY)
    assert other_number.total == 0


def test_search_by_phone_without_the_key_says_why(con: duckdb.DuckDBPyConnection) -> None:
    page = q.search_calls(con, q.CallFilter(), FROM_NUMBER, pii_key=None)
    assert page.total == 0 and not page.searched_phone
    assert page.note is not None and "CALLSCOPE_PII_KEY" in page.note


def test_search_sorts_and_limits(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    page = q.search_calls(con, q.CallFilter(), sort="failures first", limit=3)
    assert page.total == len(demo.rows) and page.rows.height == 3
    assert all(stage != "none" for stage in page.rows["failure_stage"].to_list())
    seen = q.search_calls(con, q.CallFilter(), sort="newest first").rows["first_seen_at"].to_list()
    assert seen == sorted(seen, reverse=True)
    ids = q.search_calls(con, q.CallFilter(), sort="call id").rows["call_id"].to_list()
    assert ids == sorted(ids)
    with pytest.raises(q.QueryError, match="unknown sort"):
        q.search_calls(con, q.CallFilter(), sort="call_id; DROP VIEW calls")


def test_call_detail_reads_one_call(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    call_id = demo.call("invalid_track")
    row = q.call_row(con, call_id)
    assert row is not None
    assert row["verdict"] == demo.row("invalid_track")["verdict"] == "invalid_action"
    assert "speaker" in str(row["reason"])
    events = q.call_events(con, call_id)
    assert events.height > 0 and set(events["call_id"].to_list()) == {call_id}
    assert events["ts"].to_list() == sorted(events["ts"].to_list())
    spans = q.call_spans(con, call_id)
    assert {s["trace_id"] for s in spans} == {call_trace_id_hex(call_id)}
    assert len({s["span_id"] for s in spans}) == len(spans)  # one row per span, retries collapsed
    assert {"answer_url", "webhook"} <= {s["source"] for s in spans}


def test_answer_url_response_highlights_the_offending_lines(
    demo: DemoData, con: duckdb.DuckDBPyConnection
) -> None:
    response = story.answer_url_response(q.call_spans(con, demo.call("invalid_track")))
    assert response is not None and response.is_json
    flagged = [line for line in response.lines if line.problems]
    assert len(flagged) == 1
    assert '"track": "speaker"' in flagged[0].text
    assert "inbound, outbound or both" in flagged[0].problems[0]
    assert response.problems == flagged[0].problems

    response = story.answer_url_response(q.call_spans(con, demo.call("invalid_scheme")))
    assert response is not None
    flagged = [line for line in response.lines if line.problems]
    assert len(flagged) == 1 and '"stream_url": "https://' in flagged[0].text
    assert "requires wss" in flagged[0].problems[0]

    response = story.answer_url_response(q.call_spans(con, demo.call("happy")))
    assert response is not None and response.problems == ()
    assert not any(line.problems for line in response.lines)
    assert any('"type": "start_stream"' in line.text for line in response.lines)


def test_answer_url_response_not_json(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    response = story.answer_url_response(q.call_spans(con, demo.call("answer_url_not_json")))
    assert response is not None and not response.is_json
    assert response.problems and "not JSON" in response.problems[0]


def test_no_answer_url_span_for_an_unanswered_call(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    assert story.answer_url_response(q.call_spans(con, demo.call("busy"))) is None


def test_timeline_marks_show_the_disconnect_and_webhooks(
    demo: DemoData, con: duckdb.DuckDBPyConnection
) -> None:
    marks = story.timeline_marks(q.call_spans(con, demo.call("network_drop")))
    disconnects = [m for m in marks if m.label.startswith("disconnect")]
    assert len(disconnects) == 1
    assert disconnects[0].label == "disconnect 1006 by network" and disconnects[0].kind == "problem"
    assert [m.start for m in marks] == sorted(m.start for m in marks)
    assert "call.completed" in {m.label for m in marks if m.lane == "webhooks"}

    happy = story.timeline_marks(q.call_spans(con, demo.call("happy")))
    labels = {m.label: m for m in happy}
    assert labels["answer_url"].lane == "answer_url" and labels["answer_url"].end > labels["answer_url"].start
    assert {"connected", "first media", "stop"} <= set(labels)
    clean = [m for m in happy if m.label.startswith("disconnect")]
    assert clean and clean[0].label.startswith("disconnect 1000") and clean[0].kind == "event"

    # The pipeline's root span is the whole call, as a bar with the verdict.
    root = [m for m in happy if m.lane == "call"]
    assert len(root) == 1 and root[0].bar and root[0].label == "call: ok"
    assert root[0].start <= labels["answer_url"].start and root[0].end >= clean[0].end

    duplicated = story.timeline_marks(q.call_spans(con, demo.call("duplicate_webhooks")))
    assert any(m.label.endswith("(duplicate)") for m in duplicated)


def test_clock_skew_note_only_when_the_skew_is_large(demo: DemoData) -> None:
    skewed = demo.row("skewed_receiver_clock")
    note = story.clock_skew_note(skewed)
    # The demo's receiver clock runs 4 s behind; the pipeline reports a bound, a little under it.
    match = re.search(r"at least (\d+\.\d) s behind", note or "")
    assert match is not None and 3.0 <= float(match.group(1)) <= 4.5, note
    assert "NTP" in str(note)
    assert story.clock_skew_note(demo.row("happy")) is None
    assert story.clock_skew_note({"receiver_clock_skew_ms": 2500}) is not None
    assert "ahead of" in str(story.clock_skew_note({"receiver_clock_skew_ms": 2500}))
    assert "behind" in str(story.clock_skew_note({"receiver_clock_skew_ms": -2500}))
    assert story.clock_skew_note({"receiver_clock_skew_ms": None}) is None


def test_default_bucket_gives_a_readable_number_of_bars() -> None:
    assert q.default_bucket(timedelta(minutes=15)) == "1 minute"
    assert q.default_bucket(timedelta(hours=24)) == "15 minutes"
    assert q.default_bucket(timedelta(days=7)) == "6 hours"
    assert q.default_bucket(None) == "1 hour"
    for label, width in q.BUCKETS:
        assert q.default_bucket(width * 60) in dict(q.BUCKETS), label


@pytest.mark.parametrize("title", list(q.EXAMPLE_QUERIES))
def test_every_example_query_runs_read_only(demo: DemoData, title: str) -> None:
    from pipeline.sql import run_query
    from pipeline.storage import DataDir

    result = run_query(DataDir(demo.data_dir), q.EXAMPLE_QUERIES[title])
    assert result.columns
    if title == "Failure rate by application":
        failures = sum(1 for r in demo.rows.values() if _failed(r))
        assert sum(row[result.columns.index("failures")] for row in result.rows) == failures
    if title == "Calls dropped in the last hour":
        dropped = {r["call_id"] for r in demo.rows.values() if r["verdict"] == "stream_dropped"}
        assert {row[0] for row in result.rows} == dropped


@pytest.mark.parametrize(
    ("window", "verdicts"),
    [(None, ()), (timedelta(hours=1), ()), (timedelta(hours=1), ("stream_dropped", "ok"))],
    ids=["all time", "last hour", "two verdicts"],
)
def test_overview_equals_the_single_figures(
    con: duckdb.DuckDBPyConnection, window: timedelta | None, verdicts: tuple[str, ...]
) -> None:
    flt = q.CallFilter(verdicts=verdicts) if window is None else q.last(window, _now(), verdicts=verdicts)
    # `overview` reads `calls` once and sums counts; each single-figure function reads `calls`.
    figures = q.overview(con, flt, timedelta(minutes=1))
    assert figures.kpis == q.kpis(con, flt)
    assert figures.by_verdict == q.failures_by_verdict(con, flt)
    assert figures.funnel == q.funnel(con, flt)
    assert figures.top_applications.equals(q.top_failures(con, flt, "application_id"))
    assert figures.top_customers.equals(q.top_failures(con, flt, "customer_id"))
    assert figures.series.equals(q.failures_over_time(con, flt, timedelta(minutes=1)))
    assert figures.kpis.current.failures > 0
    assert "overview_counts" not in q.views(con)  # the temporary table is dropped


def test_call_spans_near_the_call_and_the_fallback(demo: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    call_id = demo.call("happy")
    everything = q.call_spans(con, call_id)
    row = q.call_row(con, call_id)
    assert row is not None
    assert q.call_spans(con, call_id, row) == everything  # the time-bounded read finds them all
    # A row whose times are far from the spans (a receiver clock off by a day, say): the bounded
    # read finds nothing, so every span of the trace is read.
    far = {**row, "first_seen_at": row["first_seen_at"] + timedelta(days=3)}
    far["last_seen_at"] = far["first_seen_at"]
    assert q.call_spans(con, call_id, far) == everything
    # Found fewer than the build counted: read them all too.
    assert q.call_spans(con, call_id, {**row, "span_count": len(everything) + 5}) == everything


def test_call_detail_equals_the_views_for_every_scenario(
    demo: DemoData, con: duckdb.DuckDBPyConnection
) -> None:
    # call_detail derives call_events from the spans it read, with the view's SQL: the rows must be
    # the view's own, skewed receiver clock, pipeline points and every scenario's faults included.
    order = ["ts", "ord", "span_id"]
    for scenario, call_id in demo.call_ids.items():
        detail = q.call_detail(con, call_id)
        assert detail.call == q.call_row(con, call_id), scenario
        assert detail.spans == q.call_spans(con, call_id, detail.call), scenario
        view = con.execute(
            "SELECT * FROM call_events WHERE call_id = ? ORDER BY ts, ord, span_id", [call_id]
        ).fetchall()
        assert detail.events.sort(order, nulls_last=True).rows() == view, scenario
        sourced = {s["span_id"] for s in detail.spans if s["source"] in ("answer_url", "receiver", "webhook")}
        assert set(detail.events["span_id"].drop_nulls().to_list()) == sourced, scenario
        assert detail.events["event"].to_list()[-1] == "verdict", scenario
    skewed = q.call_detail(con, demo.call("skewed_receiver_clock"))
    assert "clock_skew" in skewed.events["event"].to_list()


def test_call_detail_of_a_call_not_built_yet_or_unknown(tmp_path: Path) -> None:
    from pipeline.storage import DataDir
    from tests.pipeline.timeline_spans import S, span_factory

    data = DataDir(tmp_path / "data", fsync=False)
    start = 1_780_000_000 * S
    with span_factory() as spans:
        spans.ok_call("call_unbuilt", start)
        data.write_segment(spans.rows(ingested_at_ns=start + 60 * S))
    with q.open_views(data.path) as con:
        detail = q.call_detail(con, "call_unbuilt")
        assert detail.call is None
        assert len(detail.spans) >= 4
        assert {"answer_url", "receiver", "webhook"} <= set(detail.events["source"].to_list())
        assert "verdict" not in detail.events["event"].to_list()  # no calls row: no pipeline points
        unknown = q.call_detail(con, "call_nobody")
        assert (unknown.call, unknown.spans, unknown.events.height) == (None, [], 0)


def test_failing_since_finds_the_start_of_the_latest_burst() -> None:
    import polars as pl

    base = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
    quarter = timedelta(minutes=15)

    def at(*quarters: int, verdict: str = "stream_dropped") -> list[tuple[datetime, str, int]]:
        return [(base + k * quarter, verdict, 2) for k in quarters]

    # An old failure, a quiet hour, then a burst from 02:15 with one empty bucket in it (02:45).
    rows = at(0) + at(5, 6, 8, 9) + at(7, verdict="no_media")
    series = pl.DataFrame(rows, schema=["bucket", "verdict", "calls"], orient="row")
    assert q.failing_since(series, "stream_dropped", quarter) == (base + 5 * quarter, base + 9 * quarter)
    assert q.failing_since(series, "no_media", quarter) == (base + 7 * quarter, base + 7 * quarter)
    assert q.failing_since(series, "call_failed", quarter) is None
    since = q.failing_since(series, "stream_dropped", quarter)
    text = q.headline(q.WindowCounts(50, 50, 10, 0), [("stream_dropped", "stream", 10)], None, since)
    assert "`stream_dropped` (10 calls), since **02:15 UTC** (latest: the 03:15 UTC bucket)." in text
    # A burst that began the day before says which day.
    overnight = q.headline(
        q.WindowCounts(50, 50, 10, 0),
        [("stream_dropped", "stream", 10)],
        None,
        (base - timedelta(hours=2), base),
    )
    assert "since **Nov 24 23:00 UTC**" in overnight
