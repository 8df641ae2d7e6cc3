"""Per-source JSON log lines: one line per span, enough to rebuild it, nothing private."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from collectors import logs
from collectors.identity import call_root_span_id_hex, call_trace_id_hex
from collectors.tracing import get_tracer, start_call_span


def test_span_becomes_one_json_line_in_its_source_file(
    tmp_path: Path, memory_provider: TracerProvider
) -> None:
    with logs.write_logs_to(tmp_path):
        span = start_call_span(
            get_tracer("webhook", memory_provider),
            "webhook",
            "call_123",
            "webhook",
            attributes={"minivoice.event": "call.completed", "minivoice.action.types": ("start_stream",)},
            start_time=1_780_056_600_000_000_000,
        )
        span.add_event("received", {"bytes": 12}, timestamp=1_780_056_600_100_000_000)
        span.set_status(Status(StatusCode.ERROR, "malformed"))
        span.end(end_time=1_780_056_600_250_000_000)
        logs.log_span(span)
    assert (tmp_path / "answer_url.jsonl").read_text() == ""
    (line,) = (tmp_path / "webhooks.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["v"] == 1
    assert record["record"] == "span"
    assert record["source"] == "webhook"
    assert record["name"] == "webhook"
    assert record["kind"] == "SERVER"
    assert record["call_id"] == "call_123"
    assert record["start_ns"] == 1_780_056_600_000_000_000
    assert record["end_ns"] == 1_780_056_600_250_000_000
    assert record["duration_ms"] == 250.0
    assert record["time"] == "2026-05-29T12:10:00.000000+00:00"
    assert record["status"] == "ERROR"
    assert record["status_message"] == "malformed"
    assert record["trace_id"] == call_trace_id_hex("call_123")
    assert record["parent_span_id"] == call_root_span_id_hex("call_123")
    assert record["attributes"]["minivoice.action.types"] == ["start_stream"]
    assert record["events"] == [
        {"name": "received", "time_ns": 1_780_056_600_100_000_000, "attributes": {"bytes": 12}}
    ]
    assert record["resource"] == {"service.name": "callscope-test", "host.name": "test-host"}


def test_nothing_is_written_when_the_logger_is_off(memory_provider: TracerProvider) -> None:
    logger = logging.getLogger("callscope.answer_url")
    assert not logger.isEnabledFor(logging.INFO)
    span = start_call_span(get_tracer("answer_url", memory_provider), "answer_url", "c", "answer_url")
    span.end()
    logs.log_span(span)  # no handler, no level: silently nothing


def test_non_recording_span_is_ignored() -> None:
    from opentelemetry.trace import INVALID_SPAN

    logs.log_span(INVALID_SPAN)


def test_the_fast_line_says_what_the_stdlib_would(memory_provider: TracerProvider) -> None:
    """`span_line` (orjson, no per-value conversion) reads back as `span_record` through json.dumps."""
    span = start_call_span(
        get_tracer("receiver", memory_provider),
        "stream.receiver",
        "call_é",
        "receiver",
        attributes={
            "minivoice.stream.tracks": ("inbound", "outbound"),
            "raw": b"\x00\xff",
            "many": (b"\x01", b"\x02"),
            "ratio": 0.1,
            "big": 2**62,
            "flag": True,
        },
        start_time=1_780_056_600_000_000_000,
    )
    span.add_event(
        "start", {"minivoice.stream.tracks": ("inbound",), "seq": 1}, timestamp=1_780_056_600_100_000_000
    )
    span.end(end_time=1_780_056_600_250_000_000)
    line = logs.span_line(span)
    assert "\n" not in line and "call_é" in line
    assert json.loads(line) == json.loads(json.dumps(logs.span_record(span), default=str))
    assert json.loads(line)["attributes"]["raw"] == "00ff"
    assert json.loads(line)["attributes"]["many"] == ["01", "02"]


def test_a_value_orjson_refuses_still_makes_a_line(memory_provider: TracerProvider) -> None:
    span = start_call_span(
        get_tracer("webhook", memory_provider), "webhook", "c", "webhook", attributes={"huge": 2**70}
    )
    span.end()
    assert json.loads(logs.span_line(span))["attributes"]["huge"] == 2**70
