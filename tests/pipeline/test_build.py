"""`callscope build` over real Parquet segments and a real DuckDB state: full, incremental, follow."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from pipeline import facts as facts_mod
from pipeline.ingest import running_ingest
from pipeline.rules import RulesConfig
from pipeline.schema import MINIVOICE_COLUMN, MINIVOICE_TYPE
from pipeline.storage import DataDir
from pipeline.timeline import Timeline, TimelineError
from tests.pipeline.timeline_spans import T0, S, SpanFactory

LATER = T0 + 3600 * S


def view(data: DataDir, sql: str) -> list[dict[str, Any]]:
    with data.connect_readonly() as con:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def calls(data: DataDir) -> dict[str, dict[str, Any]]:
    return {row["call_id"]: row for row in view(data, "SELECT * FROM calls")}


def test_full_build_writes_calls_events_and_views(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_a")
    spans.ok_call("call_b", T0 + 60 * S)
    spans.receiver(None, T0, T0 + S, frames=0, stop_reason=None, close_code=1002)
    data.write_segment(spans.rows())
    with Timeline(data) as timeline:
        summary = timeline.build(LATER)
        assert summary.mode == "full"
        assert (summary.calls_evaluated, summary.unattributed, summary.root_spans) == (2, 1, 2)
        assert any("1 new spans without a call id" in line for line in summary.lines())
        assert timeline.build(LATER).mode == "idle"  # its own root span segment is not read back
    built = calls(data)
    assert set(built) == {"call_a", "call_b"}
    assert {row["verdict"] for row in built.values()} == {"ok"}
    # Times are TIMESTAMP WITH TIME ZONE (UTC) in the Parquet files.
    schema = pq.read_schema(next((data.path / "calls").glob("*.parquet")))
    assert str(schema.field("completed_at").type) == "timestamp[us, tz=UTC]"
    points = view(data, "SELECT * FROM call_events WHERE call_id = 'call_a' ORDER BY ts, ord")
    assert [p["source"] for p in points][:2] == ["webhook", "webhook"]
    assert points[-1]["source"] == "pipeline" and points[-1]["event"] == "verdict"
    assert view(data, "SELECT count(*) AS n FROM unattributed_spans")[0]["n"] == 1


def test_a_late_span_re_evaluates_its_call_and_only_it(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_other", T0 + 600 * S)
    spans.lifecycle("call_123", T0, T0 + 20 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    data.write_segment(spans.rows())
    with Timeline(data) as timeline:
        timeline.build(LATER)
        assert calls(data)["call_123"]["verdict"] == "stream_not_connected"
        spans.clear()
        spans.receiver("call_123", T0 + 3 * S, T0 + 20 * S)  # exported late
        data.write_segment(spans.rows())
        summary = timeline.step(LATER)
    assert (summary.mode, summary.spans, summary.calls_evaluated) == ("incremental", 1, 1)
    assert summary.verdicts == {"ok": 1}
    after = calls(data)
    assert after["call_123"]["verdict"] == "ok"
    assert after["call_123"]["span_count"] == 6
    assert len(after) == 2  # the view keeps the latest row of each call
    assert len(list((data.path / "calls").glob("delta-*.parquet"))) == 1


def test_grace_expiry_re_evaluates_without_new_spans(data: DataDir, spans: SpanFactory) -> None:
    spans.webhook("call_123", "call.initiated", T0)
    spans.answer_url("call_123", T0 + 2 * S)
    spans.receiver("call_123", T0 + 3 * S, T0 + 30 * S)
    data.write_segment(spans.rows(ingested_at_ns=T0 + 31 * S))
    config = RulesConfig(grace_seconds=60)
    with Timeline(data, config) as timeline:
        timeline.build(T0 + 40 * S)
        assert calls(data)["call_123"]["verdict"] == "in_progress"
        assert timeline.step(T0 + 50 * S).mode == "idle"  # nothing due yet
        summary = timeline.step(T0 + 92 * S)
    assert summary.calls_evaluated == 1
    row = calls(data)["call_123"]
    assert (row["verdict"], row["is_final"]) == ("webhook_missing", True)


def test_follow_applies_new_segments_as_they_arrive(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_first")
    data.write_segment(spans.rows())
    stop = threading.Event()
    steps: list[Any] = []
    with Timeline(data) as timeline:
        thread = threading.Thread(
            target=timeline.follow,
            kwargs={"interval": 0.1, "stop": stop, "on_step": steps.append},
            daemon=True,
        )
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not steps and time.monotonic() < deadline:
                time.sleep(0.02)
            spans.clear()
            spans.ok_call("call_second", T0 + 100 * S)
            data.write_segment(spans.rows())
            while time.monotonic() < deadline and not any("call_second" in c for c in _call_ids(data)):
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30)
    assert not thread.is_alive()
    assert set(_call_ids(data)) == {"call_first", "call_second"}
    assert steps[0].mode == "full"


def _call_ids(data: DataDir) -> list[str]:
    if not (data.path / "calls").is_dir():
        return []
    return [r["call_id"] for r in view(data, "SELECT call_id FROM calls")]


def test_a_second_builder_is_refused_clearly(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_a")
    data.write_segment(spans.rows())
    first = Timeline(data)
    first.build(LATER)
    try:
        with pytest.raises(TimelineError, match="another `callscope build` is running"):
            Timeline(data).build(LATER)
    finally:
        first.close()


def test_rows_repacked_by_compaction_are_not_counted_twice(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_a")
    rows = spans.rows()
    data.write_segment(rows)
    with Timeline(data) as timeline:
        timeline.build(LATER)
        before = calls(data)["call_a"]
        # A compaction (or an OTLP retry) stores the same spans again in a new file.
        data.write_segment(rows)
        summary = timeline.step(LATER)
    assert summary.duplicate_spans == rows.num_rows and summary.spans == 0
    after = calls(data)["call_a"]
    assert (after["span_count"], after["media_frames"], after["webhook_count"]) == (
        before["span_count"],
        before["media_frames"],
        before["webhook_count"],
    )


def test_duplicates_in_a_full_build_are_counted_once(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_a")
    rows = spans.rows()
    data.write_segment(rows)
    data.write_segment(rows.slice(0, 3))
    with Timeline(data) as timeline:
        summary = timeline.build(LATER)
    assert summary.duplicate_spans == 3
    row = calls(data)["call_a"]
    assert row["span_count"] == rows.num_rows and row["duplicate_webhooks"] == 0
    assert len(view(data, "SELECT * FROM call_events WHERE source <> 'pipeline'")) == len(
        view(data, "SELECT DISTINCT span_id, event, ord FROM call_events WHERE source <> 'pipeline'")
    )


def test_the_promoted_minivoice_column_gives_the_same_calls(tmp_path: Path, spans: SpanFactory) -> None:
    spans.ok_call("call_a")
    spans.lifecycle("call_b", T0, T0 + 20 * S)
    spans.answer_url("call_b", T0 + 2 * S)
    spans.receiver("call_b", T0 + 3 * S, T0 + 9 * S, stop_reason=None, close_code=1011, closed_by="receiver")
    rows = spans.rows()
    if MINIVOICE_COLUMN in rows.schema.names:  # ingest's decoder fills it: compare with the JSON alone
        rows = rows.drop_columns([MINIVOICE_COLUMN])
    with duckdb.connect() as con:
        con.register("rows_in", rows)
        promoted = con.sql(
            f"SELECT *, {facts_mod.minivoice_from_json_sql()} AS {MINIVOICE_COLUMN} FROM rows_in"
        )
        typed = promoted.to_arrow_table()
    typed = typed.set_column(
        typed.schema.get_field_index(MINIVOICE_COLUMN),
        MINIVOICE_COLUMN,
        typed[MINIVOICE_COLUMN].cast(MINIVOICE_TYPE),
    )
    results = []
    for name, table in (("json", rows), ("typed", typed)):
        data = DataDir(tmp_path / name, fsync=False)
        directory = data.partition_dir("2026-05-29")
        directory.mkdir(parents=True)
        pq.write_table(table, directory / "seg-1.parquet")  # as an ingest with the column would
        with Timeline(data) as timeline:
            timeline.build(LATER)
        results.append(
            sorted(view(data, "SELECT * EXCLUDE (evaluated_at) FROM calls"), key=lambda r: r["call_id"])
        )
    assert results[0] == results[1]
    assert [r["verdict"] for r in results[1]] == ["ok", "stream_dropped"]


def test_deltas_are_consolidated_and_the_view_stays_right(data: DataDir, spans: SpanFactory) -> None:
    with Timeline(data) as timeline:
        for i in range(4):
            spans.clear()
            spans.ok_call(f"call_{i}", T0 + i * 100 * S)
            data.write_segment(spans.rows())
            timeline.build(LATER)
        assert len(list((data.path / "calls").glob("delta-*.parquet"))) >= 2
        timeline.consolidate()
    files = sorted(p.name for p in (data.path / "calls").glob("*.parquet"))
    assert len(files) == 1 and files[0].startswith("base-")
    assert not (data.path / "call_events").exists()  # a view over the spans: nothing stored
    built = calls(data)
    assert set(built) == {f"call_{i}" for i in range(4)}
    assert view(data, "SELECT count(*) AS n FROM call_events WHERE event = 'verdict'")[0]["n"] == 4


def test_spans_stored_by_a_live_ingest(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_live")
    spans.lifecycle("call_dropped", T0, T0 + 30 * S)
    spans.answer_url("call_dropped", T0 + 2 * S)
    spans.receiver(
        "call_dropped", T0 + 3 * S, T0 + 9 * S, stop_reason=None, close_code=1006, closed_by="network"
    )
    with running_ingest(data, fsync=False) as ingest:
        exporter = OTLPSpanExporter(endpoint=ingest.traces_url)
        try:
            assert exporter.export(spans.spans()) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
    with Timeline(data) as timeline:
        timeline.build(time.time_ns() + 60 * S)
    built = calls(data)
    assert built["call_live"]["verdict"] == "ok"
    assert built["call_dropped"]["verdict"] == "stream_dropped"
    assert built["call_dropped"]["closed_by"] == "network"


def test_an_empty_data_dir_builds_nothing_and_views_work(data: DataDir) -> None:
    data.ensure()
    with Timeline(data) as timeline:
        summary = timeline.build(LATER)
    assert summary.calls_total == 0
    assert view(data, "SELECT count(*) AS n FROM calls")[0]["n"] == 0
    assert view(data, "SELECT count(*) AS n FROM call_events")[0]["n"] == 0


def test_full_rebuild_does_not_emit_root_spans_again(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_a")
    data.write_segment(spans.rows())
    with Timeline(data) as timeline:
        assert timeline.build(LATER).root_spans == 1
        summary = timeline.build(LATER, full=True)
    assert summary.mode == "full" and summary.root_spans == 0
    assert view(data, "SELECT count(*) AS n FROM spans WHERE source = 'pipeline'")[0]["n"] == 1
    assert len(calls(data)) == 1


def test_late_span_within_settle_time_keeps_the_call_not_final(data: DataDir, spans: SpanFactory) -> None:
    spans.ok_call("call_a")
    rows = spans.rows(ingested_at_ns=T0 + 30 * S)
    data.write_segment(rows)
    with Timeline(data, RulesConfig(settle_seconds=15)) as timeline:
        timeline.build(T0 + 31 * S)
        assert calls(data)["call_a"]["is_final"] is False
        assert timeline.step(T0 + 46 * S).calls_evaluated == 1
    assert calls(data)["call_a"]["is_final"] is True


def test_call_events_is_a_view_over_the_spans_and_a_call_lookup_reads_only_its_spans(
    data: DataDir, spans: SpanFactory
) -> None:
    from pipeline import queries

    spans.ok_call("call_a")
    # A receiver clock two hours ahead: its span lies outside the window around the call.
    spans.ok_call("call_far", T0 + 600 * S, skew_ns=2 * 3600 * S)
    data.write_segment(spans.rows())
    # Points show up as soon as the spans are stored; the verdict point once the call is built.
    before = view(data, "SELECT source, event FROM call_events WHERE call_id = 'call_a'")
    assert ("webhook", "call.completed") in {(p["source"], p["event"]) for p in before}
    assert all(p["source"] != "pipeline" for p in before)
    with Timeline(data) as timeline:
        timeline.build(LATER)
    assert not (data.path / "call_events").exists()
    with data.connect_readonly() as con:
        con.execute("SET TimeZone = 'UTC'")
        for call_id in ("call_a", "call_far"):
            full = con.execute(
                "SELECT ts, source, event, detail, recorded_at, span_id FROM call_events "
                "WHERE call_id = ? ORDER BY ts, ord, span_id",
                [call_id],
            ).fetchall()
            call = queries.call_row(con, call_id)
            windowed = queries.call_timeline(con, call_id, call)
            assert [tuple(p.values()) for p in windowed] == full
            assert full[-1][1:3] == ("pipeline", "verdict")
        # Only the close call's spans are read through the window; the far one needs them all.
        for call_id, complete in (("call_a", True), ("call_far", False)):
            call = queries.call_row(con, call_id)
            windowed = queries.call_events_queries(call_id, call)[0]
            assert "low_ns" in windowed.params
            found = con.execute(f"SELECT span_id FROM ({windowed.sql})", windowed.params).fetchall()
            assert windowed.complete(r[0] for r in found) is complete
        far = queries.call_timeline(con, "call_far", queries.call_row(con, "call_far"))
        # The far receiver's points are there (found by the fallback), moved onto the webhook clock.
        assert ("receiver", "connection_closed") in {(p["source"], p["event"]) for p in far}
        assert ("pipeline", "clock_skew") in {(p["source"], p["event"]) for p in far}


def test_segments_with_and_without_the_promoted_column_build_together(
    data: DataDir, spans: SpanFactory
) -> None:
    from pipeline.verdicts import evaluate

    spans.ok_call("call_a")
    spans.lifecycle("call_b", T0, T0 + 20 * S)
    spans.answer_url("call_b", T0 + 2 * S)
    spans.receiver("call_b", T0 + 3 * S, T0 + 9 * S, stop_reason=None, close_code=1011, closed_by="receiver")
    rows = spans.rows()
    assert MINIVOICE_COLUMN in rows.schema.names  # ingest's decoder fills it
    # Half of every call's spans in an older segment without the column (JSON only).
    older = rows.filter(pa.array([i % 2 == 0 for i in range(rows.num_rows)]))
    newer = rows.filter(pa.array([i % 2 == 1 for i in range(rows.num_rows)]))
    data.write_segment(older.drop_columns([MINIVOICE_COLUMN]))
    data.write_segment(newer)
    with Timeline(data) as timeline:
        timeline.build(LATER, full=True)
    expected = {r["call_id"]: r for r in evaluate(rows, LATER).calls.to_pylist()}
    built = calls(data)
    assert {c: r["verdict"] for c, r in built.items()} == {"call_a": "ok", "call_b": "stream_dropped"}
    for call_id, row in built.items():
        for column in ("reason", "span_count", "media_frames", "close_code", "customer_id", "completed_at"):
            assert row[column] == expected[call_id][column], (call_id, column)
