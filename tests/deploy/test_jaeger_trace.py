"""Trace files for Jaeger UI's upload, from spans made by the real OTel SDK.

The spans go through the same path as in production: the SDK's OTLP protobuf encoder, the
pipeline's OTLP decoder (ingest's), stored-row shape, then `pipeline.traces.otlp_trace` and
`pipeline.jaeger`. Each format is checked for well-formed ids, microsecond times, references,
and a complete tree: every parent span id in the trace is a span of the trace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from collectors.identity import call_parent, call_root_span_id_hex, call_trace_id_hex
from pipeline.jaeger import MISSING_PARENT_ATTRIBUTE, TraceFormatError, adopt_orphans, jaeger_trace
from pipeline.otlp import decode_protobuf
from pipeline.traces import ROOT_SPAN_NAME, otlp_trace

CALL_ID = "call_jaeger_1"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
JAEGER_TAG_TYPES = {"string": str, "bool": bool, "int64": int, "float64": float, "binary": str}


def _provider(service_name: str, exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "host.name": f"{service_name}-host"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def sdk_spans() -> Iterator[list[ReadableSpan]]:
    """One call's spans from three services, made with the real SDK as the collectors make them."""
    exporter = InMemorySpanExporter()
    providers = {name: _provider(name, exporter) for name in ("answer-app", "receiver-app", "webhook-app")}
    parent = trace.set_span_in_context(call_parent(CALL_ID))

    tracer = providers["answer-app"].get_tracer("collectors.answer_url", "0.1.0")
    with tracer.start_as_current_span("answer_url", context=parent, kind=SpanKind.SERVER) as span:
        span.set_attributes(
            {
                "minivoice.call_id": CALL_ID,
                "callscope.source": "answer_url",
                "http.response.status_code": 200,
                "minivoice.answer_url.latency_ms": 12.5,
                "minivoice.action.valid": False,
                "minivoice.action.problems": ["stream_url_not_wss", "invalid_track"],
            }
        )
        span.set_status(Status(StatusCode.ERROR, "invalid action"))
        # The app's own work inside the request: a grandchild of the call root.
        with tracer.start_as_current_span("render actions"):
            pass

    tracer = providers["receiver-app"].get_tracer("collectors.receiver", "0.1.0")
    with tracer.start_as_current_span("stream.receiver", context=parent, kind=SpanKind.SERVER) as span:
        span.set_attribute("minivoice.call_id", CALL_ID)
        span.add_event("connected", {"minivoice.protocol": "minivoice.stream"})
        span.add_event("start", {"minivoice.stream.tracks": ["inbound", "outbound"]})
        span.add_event("stop", {"minivoice.stop.reason": "call_ended"})

    tracer = providers["webhook-app"].get_tracer("collectors.webhooks", "0.1.0")
    for event in ("call.answered", "call.completed"):
        with tracer.start_as_current_span("webhook", context=parent, kind=SpanKind.SERVER) as span:
            span.set_attributes({"minivoice.call_id": CALL_ID, "minivoice.event": event})

    yield list(exporter.get_finished_spans())
    for provider in providers.values():
        provider.shutdown()


def stored_rows(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    """The rows ingest would store for these spans (real encoder, real decoder)."""
    body = encode_spans(spans).SerializeToString()
    batch = decode_protobuf(body, ingested_at_ns=1)
    assert batch.rejected == 0
    return batch.table.to_pylist()


def otlp_spans(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        span
        for resource_spans in request["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
    ]


def assert_complete_otlp_tree(request: Mapping[str, Any], call_id: str) -> list[dict[str, Any]]:
    spans = otlp_spans(request)
    ids = [span["spanId"] for span in spans]
    assert len(ids) == len(set(ids)), "a span appears twice"
    for span in spans:
        assert span["traceId"] == call_trace_id_hex(call_id)
        assert HEX16.match(span["spanId"]), span["spanId"]
        assert re.fullmatch(r"\d+", span["startTimeUnixNano"]) and re.fullmatch(
            r"\d+", span["endTimeUnixNano"]
        )
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 10**18
        if "parentSpanId" in span:
            assert span["parentSpanId"] in ids, f"{span['name']}: parent {span['parentSpanId']} is missing"
    roots = [span for span in spans if "parentSpanId" not in span]
    assert [(r["name"], r["spanId"]) for r in roots] == [(ROOT_SPAN_NAME, call_root_span_id_hex(call_id))]
    return spans


def assert_complete_jaeger_tree(document: Mapping[str, Any], call_id: str) -> dict[str, Any]:
    (trace_entry,) = document["data"]
    assert trace_entry["traceID"] == call_trace_id_hex(call_id)
    assert HEX32.match(trace_entry["traceID"])
    spans = trace_entry["spans"]
    ids = {span["spanID"] for span in spans}
    assert len(ids) == len(spans)
    roots = []
    for span in spans:
        assert span["traceID"] == trace_entry["traceID"]
        assert HEX16.match(span["spanID"])
        assert isinstance(span["startTime"], int) and 10**15 < span["startTime"] < 10**17, "not microseconds"
        assert isinstance(span["duration"], int) and span["duration"] >= 0
        assert span["processID"] in trace_entry["processes"]
        parents = [ref for ref in span["references"] if ref["refType"] == "CHILD_OF"]
        assert len(parents) <= 1
        if not parents:
            roots.append(span)
        for ref in parents:
            assert ref["traceID"] == trace_entry["traceID"]
            assert ref["spanID"] in ids, f"{span['operationName']}: parent {ref['spanID']} is missing"
        for tag in span["tags"]:
            assert isinstance(tag["value"], JAEGER_TAG_TYPES[tag["type"]]), tag
        for log in span["logs"]:
            assert isinstance(log["timestamp"], int) and 10**15 < log["timestamp"] < 10**17
    assert [(r["operationName"], r["spanID"]) for r in roots] == [
        (ROOT_SPAN_NAME, call_root_span_id_hex(call_id))
    ]
    for process in trace_entry["processes"].values():
        assert process["serviceName"]
        for tag in process["tags"]:
            assert isinstance(tag["value"], JAEGER_TAG_TYPES[tag["type"]]), tag
    return trace_entry


def tags(span: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    return {tag["key"]: (tag["type"], tag["value"]) for tag in span["tags"]}


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
