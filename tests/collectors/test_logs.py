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
