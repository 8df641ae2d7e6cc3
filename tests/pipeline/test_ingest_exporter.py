"""The real OTLP/HTTP exporter against a live ingest: stored rows equal what the SDK made."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from collectors.identity import call_parent
from pipeline.ingest import running_ingest
from pipeline.storage import DataDir


def _make_spans(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("callscope.test", "1.2.3")
    context = trace.set_span_in_context(call_parent("call_123"))
    with tracer.start_as_current_span(
        "answer_url",
        context=context,
        kind=SpanKind.SERVER,
        attributes={
            "minivoice.call_id": "call_123",
            "callscope.source": "answer_url",
            "http.response.status_code": 200,
            "minivoice.answer_url.latency_ms": 12.5,
            "minivoice.action.valid": False,
            "minivoice.action.types": ["start_stream", "play"],
            "minivoice.action.counts": [1, 2],
            "minivoice.ratios": [0.5, 1.5],
            "minivoice.flags": [True, False],
            "unicode": "naïve ✓",
        },
    ) as span:
        span.add_event("first_media", {"minivoice.media.chunk": 1, "minivoice.media.track": "inbound"})
        span.set_status(Status(StatusCode.ERROR, "stream_url_not_wss"))
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_attribute("nan", float("nan"))
            child.set_attribute("inf", float("-inf"))


def _export(endpoint: str, compression: Compression) -> list:
    resource = Resource.create({"service.name": "voice-app", "host.name": "host-1"})
    memory = InMemorySpanExporter()
    exporter = OTLPSpanExporter(endpoint=endpoint, compression=compression, timeout=10)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        _make_spans(provider)
        spans = memory.get_finished_spans()
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
        provider.shutdown()
    return list(spans)


def test_exported_spans_are_stored_exactly(tmp_path: Path) -> None:
    with running_ingest(tmp_path) as ingest:
        plain = _export(ingest.traces_url, Compression.NoCompression)
        gzipped = _export(ingest.traces_url, Compression.Gzip)
    spans = plain + gzipped
    with DataDir(tmp_path).connect_readonly() as con:
        rows = con.sql("select * from spans order by start_ns, name").to_arrow_table().to_pylist()
    assert len(rows) == len(spans) == 4
    by_id = {row["span_id"]: row for row in rows}
    for span in spans:
        row = by_id[f"{span.context.span_id:016x}"]
        assert row["trace_id"] == f"{span.context.trace_id:032x}"
        assert row["parent_span_id"] == f"{span.parent.span_id:016x}"
        assert row["name"] == span.name
        assert row["kind"] == span.kind.name
        assert (row["start_ns"], row["end_ns"]) == (span.start_time, span.end_time)
        assert row["service_name"] == "voice-app"
        assert row["scope_name"] == "callscope.test"
        assert row["scope_version"] == "1.2.3"
        assert json.loads(row["resource_attributes"])["host.name"] == "host-1"
        attributes = json.loads(row["attributes"])
        if span.name == "answer_url":
            assert attributes == {
                key: list(v) if isinstance(v, tuple) else v for key, v in span.attributes.items()
            }
            assert row["call_id"] == "call_123"
            assert row["source"] == "answer_url"
            # the typed column: the attributes of MINIVOICE_FIELDS, with their types
            typed = {name: value for name, value in row["minivoice"].items() if value is not None}
            assert typed == {
                "http_status_code": 200,
                "latency_ms": 12.5,
                "action_valid": False,
                "action_types": ["start_stream", "play"],
            }
            assert (row["status_code"], row["status_message"]) == ("ERROR", "stream_url_not_wss")
            event = span.events[0]
            assert row["events"] == [
                {
                    "time_ns": event.timestamp,
                    "name": "first_media",
                    "attributes": json.dumps(dict(event.attributes), separators=(",", ":")),
                }
            ]
        else:
            # Non-finite doubles are stored as JSON strings, so the text stays standard JSON.
            assert attributes == {"nan": "NaN", "inf": "-Infinity"}
            assert row["call_id"] is None
            # no typed attribute: every field null, the struct itself not (the row has the column)
            assert row["minivoice"] is not None and set(row["minivoice"].values()) == {None}
            assert row["status_code"] == "UNSET"
            assert row["events"] == []
    assert rows[0]["trace_id"] == "cf5287d0ab1438a15543223e69e6f962"  # the call's derived trace id


def test_duckdb_parses_every_stored_json_text(tmp_path: Path) -> None:
    with running_ingest(tmp_path) as ingest:
        _export(ingest.traces_url, Compression.NoCompression)
    with DataDir(tmp_path).connect_readonly() as con:
        invalid = con.execute(
            "select count(*) from spans "
            "where not json_valid(attributes) or not json_valid(resource_attributes)"
        ).fetchone()
        assert invalid == (0,)
        latency = con.execute(
            "select (attributes->>'$.\"minivoice.answer_url.latency_ms\"')::double from spans "
            "where name = 'answer_url'"
        ).fetchone()
        assert latency == (12.5,)
