"""Trace files for Jaeger UI's upload, from spans made by the real OTel SDK.

The spans go through the same path as in production: the SDK's OTLP protobuf encoder, the
pipeline's OTLP decoder (ingest's), stored-row shape, then `pipeline.traces.otlp_trace` and
`pipeline.jaeger`. Each format is checked for well-formed ids, microsecond times, references,
and a complete tree: every parent span id in the trace is a span of the trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from collectors.identity import call_root_span_id_hex
from pipeline.jaeger import MISSING_PARENT_ATTRIBUTE, TraceFormatError, adopt_orphans, jaeger_trace
from pipeline.traces import ROOT_SPAN_NAME, otlp_trace
from tests.deploy.tracefiles import (
    CALL_ID,
    SERVICES,
    assert_complete_jaeger_tree,
    assert_complete_otlp_tree,
    make_call_spans,
    otlp_spans,
    sdk_provider,
    stored_rows,
    tags,
)


@pytest.fixture
def sdk_spans() -> Iterator[list[ReadableSpan]]:
    """One call's spans from three services, made with the real SDK as the collectors make them."""
    exporter = InMemorySpanExporter()
    providers = {name: sdk_provider(name, SimpleSpanProcessor(exporter)) for name in SERVICES}
    make_call_spans(providers, CALL_ID)
    yield list(exporter.get_finished_spans())
    for provider in providers.values():
        provider.shutdown()


def test_otlp_json_of_sdk_spans_is_one_complete_tree_with_the_root(sdk_spans: list[ReadableSpan]) -> None:
    request = otlp_trace(CALL_ID, stored_rows(sdk_spans), call=None)
    spans = assert_complete_otlp_tree(request, CALL_ID)
    assert len(spans) == len(sdk_spans) + 1  # the synthesised root
    # Round trip: the JSON is what a file holds, and still a complete tree once reloaded.
    assert_complete_otlp_tree(json.loads(json.dumps(request)), CALL_ID)


def test_jaeger_json_of_sdk_spans_keeps_times_references_tags_and_logs(
    sdk_spans: list[ReadableSpan],
) -> None:
    request = otlp_trace(CALL_ID, stored_rows(sdk_spans), call=None)
    document = json.loads(json.dumps(jaeger_trace(request)))
    entry = assert_complete_jaeger_tree(document, CALL_ID)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in entry["spans"]:
        by_name.setdefault(span["operationName"], []).append(span)

    for sdk_span in sdk_spans:
        assert sdk_span.start_time is not None and sdk_span.end_time is not None
        (match,) = [s for s in entry["spans"] if s["spanID"] == f"{sdk_span.context.span_id:016x}"]
        assert match["startTime"] == sdk_span.start_time // 1000
        assert match["duration"] == (sdk_span.end_time - sdk_span.start_time) // 1000
        expected_parent = f"{sdk_span.parent.span_id:016x}" if sdk_span.parent else None
        assert [r["spanID"] for r in match["references"]] == [expected_parent]

    (answer,) = by_name["answer_url"]
    answer_tags = tags(answer)
    assert answer_tags["http.response.status_code"] == ("int64", 200)
    assert answer_tags["minivoice.answer_url.latency_ms"] == ("float64", 12.5)
    assert answer_tags["minivoice.action.valid"] == ("bool", False)
    assert json.loads(answer_tags["minivoice.action.problems"][1]) == ["stream_url_not_wss", "invalid_track"]
    assert answer_tags["span.kind"] == ("string", "server")
    assert answer_tags["otel.status_code"] == ("string", "ERROR")
    assert answer_tags["error"] == ("bool", True)
    assert answer_tags["otel.status_description"] == ("string", "invalid action")
    assert answer_tags["otel.scope.name"] == ("string", "collectors.answer_url")
    (child,) = by_name["render actions"]
    assert child["references"][0]["spanID"] == answer["spanID"]

    (receiver,) = by_name["stream.receiver"]
    assert [log["fields"][0] for log in receiver["logs"]] == [
        {"key": "event", "type": "string", "value": name} for name in ("connected", "start", "stop")
    ]
    receiver_span = next(s for s in sdk_spans if s.name == "stream.receiver")
    assert [log["timestamp"] for log in receiver["logs"]] == [
        e.timestamp // 1000 for e in receiver_span.events
    ]

    processes = entry["processes"]
    services = {p["serviceName"] for p in processes.values()}
    assert services == {"answer-app", "receiver-app", "webhook-app", "callscope-pipeline"}
    answer_process = processes[answer["processID"]]
    assert answer_process["serviceName"] == "answer-app"
    assert {"key": "host.name", "type": "string", "value": "answer-app-host"} in answer_process["tags"]
    (root,) = by_name[ROOT_SPAN_NAME]
    assert tags(root)["minivoice.call_id"] == ("string", CALL_ID)


def test_root_span_from_the_calls_row_carries_the_verdict(sdk_spans: list[ReadableSpan]) -> None:
    call = {"verdict": "invalid_action", "failure_stage": "action", "reason": "stream_url scheme is https"}
    document = jaeger_trace(otlp_trace(CALL_ID, stored_rows(sdk_spans), call=call))
    entry = assert_complete_jaeger_tree(document, CALL_ID)
    (root,) = [s for s in entry["spans"] if s["operationName"] == ROOT_SPAN_NAME]
    root_tags = tags(root)
    assert root_tags["callscope.verdict"] == ("string", "invalid_action")
    assert root_tags["error"] == ("bool", True)
    first_start = min(s["startTime"] for s in entry["spans"])
    last_end = max(s["startTime"] + s["duration"] for s in entry["spans"])
    assert root["startTime"] == first_start and root["startTime"] + root["duration"] >= last_end - 1


def test_a_span_whose_parent_was_never_stored_is_adopted_by_the_root(sdk_spans: list[ReadableSpan]) -> None:
    rows = stored_rows(sdk_spans)
    dropped = next(r for r in rows if r["name"] == "answer_url")
    rows.remove(dropped)  # its child "render actions" is now an orphan
    request = otlp_trace(CALL_ID, rows, call=None)
    with pytest.raises(AssertionError, match="is missing"):
        assert_complete_otlp_tree(request, CALL_ID)

    adopted = adopt_orphans(request, call_root_span_id_hex(CALL_ID))
    spans = assert_complete_otlp_tree(adopted, CALL_ID)
    (orphan,) = [s for s in spans if s["name"] == "render actions"]
    assert orphan["parentSpanId"] == call_root_span_id_hex(CALL_ID)
    assert {"key": MISSING_PARENT_ATTRIBUTE, "value": {"stringValue": dropped["span_id"]}} in orphan[
        "attributes"
    ]
    assert_complete_jaeger_tree(jaeger_trace(adopted), CALL_ID)
    # The input is left alone.
    assert (
        next(s for s in otlp_spans(request) if s["name"] == "render actions")["parentSpanId"]
        == dropped["span_id"]
    )


def test_links_become_follows_from_references() -> None:
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": []},
                "scopeSpans": [
                    {
                        "scope": {},
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": "cd" * 8,
                                "name": "linked",
                                "kind": "SPAN_KIND_CLIENT",
                                "startTimeUnixNano": "1700000000000001000",
                                "endTimeUnixNano": "1700000000000003500",
                                "links": [{"traceId": "ef" * 16, "spanId": "12" * 8}],
                                "status": {"code": "STATUS_CODE_OK"},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    (entry,) = jaeger_trace(request)["data"]
    (span,) = entry["spans"]
    assert span["references"] == [{"refType": "FOLLOWS_FROM", "traceID": "ef" * 16, "spanID": "12" * 8}]
    assert (span["startTime"], span["duration"]) == (1700000000000001, 2)
    assert tags(span)["span.kind"] == ("string", "client")
    assert tags(span)["otel.status_code"] == ("string", "OK")
    assert entry["processes"]["p1"]["serviceName"] == "unknown_service"


@pytest.mark.parametrize(
    "request_body",
    [{}, {"resourceSpans": "nope"}, {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x"}]}]}]}],
)
def test_not_an_otlp_request_is_a_clear_error(request_body: dict[str, Any]) -> None:
    with pytest.raises(TraceFormatError):
        jaeger_trace(request_body)


def test_adopting_needs_the_root_in_the_trace() -> None:
    with pytest.raises(TraceFormatError, match="root span"):
        adopt_orphans({"resourceSpans": []}, "00" * 8)
