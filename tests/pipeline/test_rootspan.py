"""The `minivoice.call` root span: emitted once per final verdict to a real OTLP/HTTP receiver."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from collectors.identity import call_root_span_id_hex, call_trace_id_hex
from pipeline.compaction import compact
from pipeline.rootspan import RootSpanEmitter
from pipeline.storage import DataDir
from pipeline.timeline import Timeline
from tests.otlp_sink import OTLPSink
from tests.pipeline.timeline_spans import T0, S, SpanFactory

LATER = T0 + 3600 * S


def emitter_for(data: DataDir, sink: OTLPSink, **options: float) -> RootSpanEmitter:
    return RootSpanEmitter(
        data,
        endpoints=[sink.endpoint],
        exporter_factory=lambda endpoint: OTLPSpanExporter(endpoint=endpoint, timeout=2),
        **options,  # type: ignore[arg-type]
    )


def roots(sink: OTLPSink) -> list[dict[str, object]]:
    return sink.spans("minivoice.call")


def test_a_final_call_emits_its_root_span_once_with_the_derived_ids(
    data: DataDir, spans: SpanFactory, otlp_sink: OTLPSink
) -> None:
    spans.ok_call("call_123")
    spans.lifecycle("call_busy", T0, T0 + 10 * S, final_status="busy", answered=False)
    rows = spans.rows()
    data.write_segment(rows)
    spans.clear()
    spans.webhook("call_open", "call.initiated", LATER - 5 * S)  # not final: no root span
    data.write_segment(spans.rows())
    emitter = emitter_for(data, otlp_sink)
    with Timeline(data, emitter=emitter) as timeline:
        summary = timeline.build(LATER)
        assert summary.root_spans == 2 and not summary.root_span_errors
        timeline.build(LATER)
        timeline.build(LATER)
    emitter.shutdown()
    emitted = {r["call_id"]: r for r in roots(otlp_sink)}
    assert set(emitted) == {"call_123", "call_busy"}  # once each, however often the build runs
    root = emitted["call_123"]
    assert root["trace_id"] == call_trace_id_hex("call_123") == "cf5287d0ab1438a15543223e69e6f962"
    assert root["span_id"] == call_root_span_id_hex("call_123") == "b7bfec47d932d3c7"
    assert root["parent_span_id"] is None and root["kind"] == "INTERNAL"
    attributes = root["attributes"]
    assert isinstance(attributes, dict)
    assert attributes["callscope.verdict"] == "ok"
    assert attributes["callscope.failure_stage"] == "none"
    assert attributes["callscope.source"] == "pipeline"
    assert attributes["minivoice.call_id"] == "call_123"
    assert attributes["minivoice.call.status"] == "completed"
    assert root["status_code"] == "UNSET"
    # The real start and end: the first webhook's created_at, the last thing seen.
    assert root["start_ns"] == T0
    assert root["end_ns"] >= T0 + 20 * S
    # Every collector span of the call hangs under it.
    children = {r["parent_span_id"] for r in rows.to_pylist() if r["call_id"] == "call_123"}
    assert children == {root["span_id"]}
    busy = emitted["call_busy"]
    assert busy["status_code"] == "ERROR"
    assert str(busy["status_message"]).startswith("call_failed: call.completed reports status busy")
    # Our own span store holds the roots too (export-trace, Jaeger views of stored data).
    with data.connect_readonly() as con:
        stored = con.execute("SELECT call_id, span_id FROM spans WHERE name = 'minivoice.call'").fetchall()
    assert sorted(stored) == [
        ("call_123", "b7bfec47d932d3c7"),
        ("call_busy", call_root_span_id_hex("call_busy")),
    ]


def test_a_changed_verdict_emits_the_root_span_again(
    data: DataDir, spans: SpanFactory, otlp_sink: OTLPSink
) -> None:
    spans.lifecycle("call_123", T0, T0 + 20 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    data.write_segment(spans.rows())
    emitter = emitter_for(data, otlp_sink)
    with Timeline(data, emitter=emitter) as timeline:
        timeline.build(LATER)
        spans.clear()
        spans.receiver("call_123", T0 + 3 * S, T0 + 20 * S)
        data.write_segment(spans.rows())
        assert timeline.step(LATER).root_spans == 1
        timeline.step(LATER)
    emitter.shutdown()
    verdicts = [r["attributes"]["callscope.verdict"] for r in roots(otlp_sink)]  # type: ignore[index]
    assert verdicts == ["stream_not_connected", "ok"]


def test_a_failing_endpoint_is_retried_later_without_writing_the_store_twice(
    data: DataDir, spans: SpanFactory, otlp_sink: OTLPSink
) -> None:
    spans.ok_call("call_123")
    data.write_segment(spans.rows())
    otlp_sink.status_code = 400
    emitter = emitter_for(data, otlp_sink, backoff_seconds=0.0)
    with Timeline(data, emitter=emitter) as timeline:
        failed = timeline.build(LATER)
        assert failed.root_spans == 1  # stored
        assert failed.root_span_errors and "will be retried" in failed.root_span_errors[0]
        otlp_sink.status_code = 200
        retried = timeline.build(LATER)
        assert retried.root_spans == 0 and not retried.root_span_errors
        timeline.build(LATER)
    emitter.shutdown()
    assert len(roots(otlp_sink)) == 1
    with data.connect_readonly() as con:
        assert con.execute("SELECT count(*) FROM spans_raw WHERE source = 'pipeline'").fetchall() == [(1,)]


def test_readers_and_compaction_see_the_latest_root_span_of_a_changed_verdict(
    data: DataDir, spans: SpanFactory
) -> None:
    spans.lifecycle("call_123", T0, T0 + 20 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    data.write_segment(spans.rows())
    with Timeline(data) as timeline:
        timeline.build(LATER)
        spans.clear()
        spans.receiver("call_123", T0 + 3 * S, T0 + 20 * S)
        data.write_segment(spans.rows())
        assert timeline.step(LATER).root_spans == 1

    def stored_verdicts(view: str) -> list[object]:
        with data.connect_readonly() as con:
            rows = con.execute(
                f"SELECT attributes->>'$.\"callscope.verdict\"' FROM {view} "
                "WHERE name = 'minivoice.call' ORDER BY ingested_at_ns"
            ).fetchall()
        return [r[0] for r in rows]

    # Both copies share (trace_id, span_id): the re-emitted one, with the new verdict, wins.
    assert stored_verdicts("spans_raw") == ["stream_not_connected", "ok"]
    assert stored_verdicts("spans") == ["ok"]
    result = compact(data, small_bytes=1 << 30)
    assert result.duplicates_dropped == 1
    assert stored_verdicts("spans_raw") == stored_verdicts("spans") == ["ok"]
