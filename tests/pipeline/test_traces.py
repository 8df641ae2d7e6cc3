"""One call's trace as OTLP JSON (the dashboard's "Download trace", `callscope export-trace`).

On the demo-built dataset: the file holds every stored span of the call and the root span, in the
OTLP/JSON encoding (hex ids, nanosecond times as decimal strings), and it decodes back, through
ingest's own OTLP JSON decoder, to the same spans.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from collectors.identity import call_root_span_id_hex, call_trace_id_hex
from pipeline import dashboard_queries as q
from pipeline.otlp import request_to_table
from pipeline.otlp_json import parse_json_document
from pipeline.traces import ROOT_SPAN_NAME, TraceNotFound, any_value, otlp_trace, trace_otlp_json
from tests.dashboard.fixtures import DemoData, demo_data

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return demo_data(tmp_path_factory)


def _spans(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        span
        for resource in document["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]


def _attributes(span: dict[str, Any]) -> dict[str, Any]:
    return {kv["key"]: next(iter(kv["value"].values())) for kv in span["attributes"]}


def test_trace_holds_every_stored_span_and_the_root(demo: DemoData) -> None:
    call_id = demo.call("network_drop")
    document = trace_otlp_json(demo.data_dir, call_id)
    spans = _spans(document)
    with q.open_views(demo.data_dir) as con:
        stored = {s["span_id"] for s in q.call_spans(con, call_id)}
    ids = [s["spanId"] for s in spans]
    assert len(ids) == len(set(ids))  # each span once
    assert stored | {call_root_span_id_hex(call_id)} == set(ids)
    roots = [s for s in spans if s["name"] == ROOT_SPAN_NAME]
    assert len(roots) == 1
    root = roots[0]
    assert root["spanId"] == call_root_span_id_hex(call_id) and "parentSpanId" not in root
    assert _attributes(root)["callscope.verdict"] == "stream_dropped"
    assert root["status"]["code"] == 2  # ERROR: a failed call
    for span in spans:
        assert HEX32.match(span["traceId"]) and span["traceId"] == call_trace_id_hex(call_id)
        assert HEX16.match(span["spanId"])
        assert span["startTimeUnixNano"].isdigit() and span["endTimeUnixNano"].isdigit()
        assert int(root["startTimeUnixNano"]) <= int(span["startTimeUnixNano"])
        assert int(span["endTimeUnixNano"]) <= int(root["endTimeUnixNano"])
        if span is not root:
            assert span["parentSpanId"] == root["spanId"]
    json.dumps(document)  # plain JSON all the way down


def test_trace_decodes_back_through_ingest(demo: DemoData) -> None:
    call_id = demo.call("receiver_closes_early")
    document = trace_otlp_json(demo.data_dir, call_id)
    request, validation = parse_json_document(copy.deepcopy(document))
    assert validation.rejected == 0, validation.reasons
    table = request_to_table(request, ingested_at_ns=1).table
    assert set(table["span_id"].to_pylist()) == {s["spanId"] for s in _spans(document)}
    decoded = {row["span_id"]: row for row in table.to_pylist()}
    with q.open_views(demo.data_dir) as con:
        for span in q.call_spans(con, call_id):
            again = decoded[span["span_id"]]
            assert (again["start_ns"], again["end_ns"]) == (span["start_ns"], span["end_ns"])
            assert again["name"] == span["name"] and again["call_id"] == call_id
            assert json.loads(again["attributes"]) == json.loads(span["attributes"])
            assert [e["name"] for e in again["events"]] == [e["name"] for e in span["events"] or []]


def test_unknown_call_is_trace_not_found(demo: DemoData) -> None:
    with pytest.raises(TraceNotFound, match="call_nobody"):
        trace_otlp_json(demo.data_dir, "call_nobody")


def test_root_span_made_from_the_calls_row_when_none_is_stored() -> None:
    call_id = "call_123"
    span = {
        "trace_id": call_trace_id_hex(call_id),
        "span_id": "00000000000000aa",
        "parent_span_id": call_root_span_id_hex(call_id),
        "name": "answer_url",
        "kind": "SERVER",
        "start_ns": 1_000,
        "end_ns": 2_000,
        "status_code": "ERROR",
        "attributes": json.dumps({"minivoice.call_id": call_id, "minivoice.action.valid": False}),
        "resource_attributes": json.dumps({"service.name": "voice-app"}),
        "events": [],
    }
    call = {"verdict": "invalid_action", "failure_stage": "action", "reason": "track is speaker"}
    document = otlp_trace(call_id, [span, dict(span)], call)  # a retried delivery: exported once
    spans = _spans(document)
    assert [s["name"] for s in spans] == [ROOT_SPAN_NAME, "answer_url"]
    root = spans[0]
    assert (root["startTimeUnixNano"], root["endTimeUnixNano"]) == ("1000", "2000")
    assert root["traceId"] == "cf5287d0ab1438a15543223e69e6f962" and root["spanId"] == "b7bfec47d932d3c7"
    assert root["status"] == {"code": 2, "message": "track is speaker"}
    assert _attributes(root)["callscope.failure_stage"] == "action"
    services = [
        _attributes({"attributes": r["resource"]["attributes"]})["service.name"]
        for r in document["resourceSpans"]
    ]
    assert sorted(services) == ["callscope-pipeline", "voice-app"]


def test_attribute_values_use_the_otlp_json_encoding() -> None:
    assert any_value("x") == {"stringValue": "x"}
    assert any_value(True) == {"boolValue": True}
    assert any_value(2**62) == {"intValue": str(2**62)}  # 64-bit integers as strings
    assert any_value(1.5) == {"doubleValue": 1.5}
    assert any_value(["a", 1]) == {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}
    assert any_value({"k": "v"}) == {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}
    assert any_value(None) == {}
