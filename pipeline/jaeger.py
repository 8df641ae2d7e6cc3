"""Jaeger trace files: one call's trace in the JSON that Jaeger UI's "Upload JSON" accepts.

Pure: an OTLP/JSON `ExportTraceServiceRequest` (as `pipeline.traces.otlp_trace` makes it) in,
a document out. Two things are done here:

- `adopt_orphans`: a span whose parent was never stored (dropped by an exporter, or sent to
  another backend) is re-parented on the call's root span, so the file is one complete tree.
  The missing parent id is kept as the attribute `callscope.missing_parent_span_id`.
- `jaeger_trace`: OTLP to the Jaeger query API's JSON (`GET /api/traces/{id}`), the other format
  the UI loads: `{"data": [{"traceID", "spans", "processes"}]}` with microsecond times,
  CHILD_OF references from parent ids (FOLLOWS_FROM from links), typed tags, logs from span
  events, and one process per resource. The mapping follows the OpenTelemetry Collector's
  OTLP-to-Jaeger translator: `span.kind`, `otel.status_code`, `error`, `otel.status_description`,
  `otel.scope.name`/`otel.scope.version`, and the event name as the log field `event`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: Attribute set on a re-parented span: the parent id it named, which the trace does not hold.
MISSING_PARENT_ATTRIBUTE = "callscope.missing_parent_span_id"

#: OTLP span kinds (enum values) as the lower-case names of Jaeger's `span.kind` tag.
_SPAN_KIND_TAGS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_SPAN_KIND_NAMES = {
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


class TraceFormatError(ValueError):
    """The input is not an OTLP/JSON traces request this module can convert. The message says why."""


def _spans(
    request: Mapping[str, Any],
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any], dict[str, Any]]]:
    """(resource, scope, span) for every span of an OTLP/JSON request."""
    resource_spans = request.get("resourceSpans")
    if not isinstance(resource_spans, list):
        raise TraceFormatError('an OTLP/JSON traces request needs a "resourceSpans" list')
    for resource_span in resource_spans:
        resource = resource_span.get("resource") or {}
        for scope_span in resource_span.get("scopeSpans") or []:
            scope = scope_span.get("scope") or {}
            for span in scope_span.get("spans") or []:
                yield resource, scope, span


def _attribute_value(any_value: Mapping[str, Any]) -> Any:
    """An OTLP/JSON AnyValue as a plain Python value (int64 strings become ints)."""
    if "stringValue" in any_value:
        return any_value["stringValue"]
    if "boolValue" in any_value:
        return bool(any_value["boolValue"])
    if "intValue" in any_value:
        return int(any_value["intValue"])
    if "doubleValue" in any_value:
        return float(any_value["doubleValue"])
    if "bytesValue" in any_value:
        return any_value["bytesValue"]  # base64 text, as OTLP/JSON writes bytes
    if "arrayValue" in any_value:
        return [_attribute_value(v) for v in (any_value["arrayValue"].get("values") or [])]
    if "kvlistValue" in any_value:
        return {
            kv["key"]: _attribute_value(kv.get("value") or {})
            for kv in (any_value["kvlistValue"].get("values") or [])
        }
    return None


def _key_values(attributes: Any) -> list[tuple[str, Any, Mapping[str, Any]]]:
    return [
        (kv["key"], _attribute_value(kv.get("value") or {}), kv.get("value") or {}) for kv in attributes or []
    ]


def _tag(key: str, value: Any, raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Jaeger JSON tag: {key, type, value} with Jaeger's value types."""
    if raw is not None and "bytesValue" in raw:
        return {"key": key, "type": "binary", "value": raw["bytesValue"]}
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    # Arrays and maps have no Jaeger type: the translator writes them as JSON text.
    return {"key": key, "type": "string", "value": json.dumps(value, separators=(",", ":"))}


def _enum(value: Any, names: Mapping[str, int]) -> int:
    """An OTLP/JSON enum, written as its integer (the spec) or its name (some encoders)."""
    if isinstance(value, str):
        return names.get(value, int(value) if value.isdigit() else 0)
    return int(value or 0)


def _micros(nanos: Any) -> int:
    return int(nanos or 0) // 1000


def adopt_orphans(request: Mapping[str, Any], root_span_id: str) -> dict[str, Any]:
    """A copy of `request` where every span whose parent is not in it becomes a child of the root.

    The root (`root_span_id`, hex) must be in the request. Spans are otherwise unchanged.
    """
    result = copy.deepcopy(dict(request))
    present = {str(span.get("spanId")) for _, _, span in _spans(result)}
    if root_span_id not in present:
        raise TraceFormatError(f"the root span {root_span_id} is not in the trace")
    for _, _, span in _spans(result):
        parent = span.get("parentSpanId")
        if not parent or parent in present or span.get("spanId") == root_span_id:
            continue
        span["parentSpanId"] = root_span_id
        span.setdefault("attributes", []).append(
            {"key": MISSING_PARENT_ATTRIBUTE, "value": {"stringValue": str(parent)}}
        )
    return result


def _process(resource: Mapping[str, Any]) -> dict[str, Any]:
    attributes = _key_values(resource.get("attributes"))
    service_name = next((value for key, value, _ in attributes if key == "service.name"), None)
    return {
        "serviceName": str(service_name) if service_name is not None else "unknown_service",
        "tags": [_tag(key, value, raw) for key, value, raw in attributes if key != "service.name"],
    }


def _span_tags(span: Mapping[str, Any], scope: Mapping[str, Any]) -> list[dict[str, Any]]:
    tags = []
    if scope.get("name"):
        tags.append(_tag("otel.scope.name", str(scope["name"])))
    if scope.get("version"):
        tags.append(_tag("otel.scope.version", str(scope["version"])))
    tags.extend(_tag(key, value, raw) for key, value, raw in _key_values(span.get("attributes")))
    kind = _SPAN_KIND_TAGS.get(_enum(span.get("kind"), _SPAN_KIND_NAMES))
    if kind is not None:
        tags.append(_tag("span.kind", kind))
    status = span.get("status") or {}
    code = _enum(status.get("code"), _STATUS_NAMES)
    if code == 1:
        tags.append(_tag("otel.status_code", "OK"))
    elif code == 2:
        tags.append(_tag("otel.status_code", "ERROR"))
        tags.append(_tag("error", True))
    if status.get("message"):
        tags.append(_tag("otel.status_description", str(status["message"])))
    if span.get("traceState"):
        tags.append(_tag("w3c.tracestate", str(span["traceState"])))
    return tags


def _references(span: Mapping[str, Any], trace_id: str) -> list[dict[str, str]]:
    references = []
    if span.get("parentSpanId"):
        # The parent first: Jaeger takes the first CHILD_OF reference as the parent.
        references.append({"refType": "CHILD_OF", "traceID": trace_id, "spanID": str(span["parentSpanId"])})
    for link in span.get("links") or []:
        if link.get("traceId") and link.get("spanId"):
            references.append(
                {"refType": "FOLLOWS_FROM", "traceID": str(link["traceId"]), "spanID": str(link["spanId"])}
            )
    return references


def _logs(span: Mapping[str, Any]) -> list[dict[str, Any]]:
    logs = []
    for event in span.get("events") or []:
        fields = [_tag("event", str(event["name"]))] if event.get("name") else []
        fields.extend(_tag(key, value, raw) for key, value, raw in _key_values(event.get("attributes")))
        logs.append({"timestamp": _micros(event.get("timeUnixNano")), "fields": fields})
    return logs


def jaeger_trace(request: Mapping[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON traces request as Jaeger UI JSON: `{"data": [one entry per trace id]}`.

    Spans are ordered by start time. Processes are numbered `p1`, `p2`, ... per distinct resource.
    """
    traces: dict[str, dict[str, Any]] = {}
    process_ids: dict[str, dict[str, str]] = {}
    for resource, scope, span in _spans(request):
        trace_id = str(span.get("traceId") or "")
        span_id = str(span.get("spanId") or "")
        if not trace_id or not span_id:
            raise TraceFormatError(f"span {span.get('name')!r} has no traceId or spanId")
        trace = traces.setdefault(
            trace_id, {"traceID": trace_id, "spans": [], "processes": {}, "warnings": None}
        )
        process = _process(resource)
        process_key = json.dumps(process, sort_keys=True)
        ids = process_ids.setdefault(trace_id, {})
        if process_key not in ids:
            ids[process_key] = f"p{len(ids) + 1}"
            trace["processes"][ids[process_key]] = process
        start = _micros(span.get("startTimeUnixNano"))
        end_ns, start_ns = int(span.get("endTimeUnixNano") or 0), int(span.get("startTimeUnixNano") or 0)
        trace["spans"].append(
            {
                "traceID": trace_id,
                "spanID": span_id,
                "flags": 1,
                "operationName": str(span.get("name") or ""),
                "references": _references(span, trace_id),
                "startTime": start,
                "duration": max(end_ns - start_ns, 0) // 1000,
                "tags": _span_tags(span, scope),
                "logs": _logs(span),
                "processID": ids[process_key],
                "warnings": None,
            }
        )
    for trace in traces.values():
        trace["spans"].sort(key=lambda s: (s["startTime"], s["spanID"]))
    return {"data": list(traces.values()), "total": 0, "limit": 0, "offset": 0, "errors": None}


#: The formats `callscope export-trace` writes.
FORMATS = ("otlp-json", "jaeger-json")


def trace_document(data_dir: str | Path, call_id: str, trace_format: str = "otlp-json") -> dict[str, Any]:
    """The whole trace of `call_id` from a data directory, as a document Jaeger UI can upload.

    `otlp-json` is an OTLP/JSON request (`{"resourceSpans": [...]}`), `jaeger-json` the Jaeger
    query API's JSON. Both hold the root `minivoice.call` span and form one complete tree.
    Raises `pipeline.traces.TraceNotFound` when nothing is stored about the call.
    """
    from collectors.identity import call_root_span_id_hex
    from pipeline.traces import trace_otlp_json

    if trace_format not in FORMATS:
        raise ValueError(f"unknown trace format {trace_format!r}; use one of {', '.join(FORMATS)}")
    request = adopt_orphans(trace_otlp_json(data_dir, call_id), call_root_span_id_hex(call_id))
    return jaeger_trace(request) if trace_format == "jaeger-json" else request
