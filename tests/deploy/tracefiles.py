"""Checks shared by the trace-file tests: what makes a file Jaeger UI can load as one complete tree."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from collectors.identity import call_parent, call_root_span_id_hex, call_trace_id_hex
from pipeline.otlp import decode_protobuf
from pipeline.traces import ROOT_SPAN_NAME

CALL_ID = "call_jaeger_1"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
JAEGER_TAG_TYPES = {"string": str, "bool": bool, "int64": int, "float64": float, "binary": str}
#: The services one call's spans come from, as in a real deployment.
SERVICES = ("answer-app", "receiver-app", "webhook-app")


def sdk_provider(service_name: str, processor: SpanProcessor) -> TracerProvider:
    """A TracerProvider for one service, with a host.name as the collectors set it."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "host.name": f"{service_name}-host"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(processor)
    return provider


def make_call_spans(providers: Mapping[str, TracerProvider], call_id: str) -> None:
    """One call's spans, as the three collectors make them, plus a span of the app's own under one.

    `providers` maps each of SERVICES to a provider. Attribute values of every OTLP type appear.
    """
    parent = trace.set_span_in_context(call_parent(call_id))

    tracer = providers["answer-app"].get_tracer("collectors.answer_url", "0.1.0")
    with tracer.start_as_current_span("answer_url", context=parent, kind=SpanKind.SERVER) as span:
        span.set_attributes(
            {
                "minivoice.call_id": call_id,
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
        span.set_attribute("minivoice.call_id", call_id)
        span.add_event("connected", {"minivoice.protocol": "minivoice.stream"})
        span.add_event("start", {"minivoice.stream.tracks": ["inbound", "outbound"]})
        span.add_event("stop", {"minivoice.stop.reason": "call_ended"})

    tracer = providers["webhook-app"].get_tracer("collectors.webhooks", "0.1.0")
    for event in ("call.answered", "call.completed"):
        with tracer.start_as_current_span("webhook", context=parent, kind=SpanKind.SERVER) as span:
            span.set_attributes({"minivoice.call_id": call_id, "minivoice.event": event})


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
