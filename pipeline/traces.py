"""One call's trace as OTLP JSON: the file Jaeger UI's "Upload" accepts, and `callscope export-trace` writes.

The core (`otlp_trace`) is pure: stored span rows (SPAN_SCHEMA dicts) and the call's `calls` row in,
an OTLP/JSON `ExportTraceServiceRequest` out. Per the OTLP/JSON encoding, trace and span ids are hex
(not base64), 64-bit integers (times, intValue) are decimal strings, and enums are integers.

The trace always holds the root span `minivoice.call`: the stored one when the pipeline's own root
was ingested, otherwise one made here from the `calls` row with the derived ids (docs/spans.md),
so Jaeger shows one tree with no missing-parent warning even for a call that is not final yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collectors.identity import call_root_span_id_hex, call_trace_id_hex
from pipeline.schema import SPAN_KINDS, STATUS_CODES

ROOT_SPAN_NAME = "minivoice.call"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: service.name of the spans the pipeline makes itself (the root span).
PIPELINE_SERVICE_NAME = "callscope-pipeline"

#: The stored columns a trace export needs, in SPAN_SCHEMA terms.
SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "status_code",
    "status_message",
    "service_name",
    "scope_name",
    "scope_version",
    "call_id",
    "source",
    "attributes",
    "resource_attributes",
    "events",
    "links",
)


class TraceNotFound(LookupError):
    """No span and no `calls` row mention this call id."""


def any_value(value: Any) -> dict[str, Any]:
    """A plain (JSON-decoded) attribute value as an OTLP/JSON AnyValue."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": key_values(value)}}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def key_values(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict of attributes as an OTLP/JSON KeyValue list."""
    return [{"key": str(key), "value": any_value(value)} for key, value in attributes.items()]


def _json_object(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _json_list(raw: str | None) -> list[Any]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _span(row: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(row.get("kind") or "UNSPECIFIED")
    status_code = str(row.get("status_code") or "UNSET")
    span: dict[str, Any] = {
        "traceId": row["trace_id"],
        "spanId": row["span_id"],
        "name": row["name"],
        "kind": SPAN_KINDS.index(kind) if kind in SPAN_KINDS else 0,
        "startTimeUnixNano": str(int(row["start_ns"])),
        "endTimeUnixNano": str(int(row["end_ns"])),
        "attributes": key_values(_json_object(row.get("attributes"))),
        "events": [
            {
                "timeUnixNano": str(int(event["time_ns"])),
                "name": event["name"],
                "attributes": key_values(_json_object(event.get("attributes"))),
            }
            for event in (row.get("events") or [])
        ],
        "links": [
            {
                "traceId": link.get("trace_id", ""),
                "spanId": link.get("span_id", ""),
                "attributes": key_values(link.get("attributes") or {}),
            }
            for link in _json_list(row.get("links"))
            if isinstance(link, dict)
        ],
        "status": {"code": STATUS_CODES.index(status_code) if status_code in STATUS_CODES else 0},
    }
    if row.get("parent_span_id"):
        span["parentSpanId"] = row["parent_span_id"]
    if row.get("trace_state"):
        span["traceState"] = row["trace_state"]
    if row.get("status_message"):
        span["status"]["message"] = row["status_message"]
    return span


def _is_failure(call: Mapping[str, Any]) -> bool:
    stage = call.get("failure_stage")
    return stage is not None and stage != "none"


def _ns(value: Any) -> int | None:
    """A `calls` time column (datetime, naive meaning UTC, or epoch ns) as epoch nanoseconds."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH  # exact, unlike the float of datetime.timestamp()
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return None


def root_span_row(
    call_id: str, call: Mapping[str, Any] | None, spans: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The `minivoice.call` root span as a stored-span-shaped row, made from the call's `calls` row.

    Start is the earliest thing seen about the call, end the latest (docs/spans.md).
    """
    call = call or {}
    starts = [int(s["start_ns"]) for s in spans]
    ends = [int(s["end_ns"]) for s in spans]
    for column in ("first_seen_at", "connected_at"):
        if (ns := _ns(call.get(column))) is not None:
            starts.append(ns)
    for column in ("completed_at", "disconnected_at", "last_media_at"):
        if (ns := _ns(call.get(column))) is not None:
            ends.append(ns)
    start = min(starts) if starts else 0
    end = max([*ends, start])
    attributes: dict[str, Any] = {"minivoice.call_id": call_id, "callscope.source": "pipeline"}
    for column, attribute in (
        ("verdict", "callscope.verdict"),
        ("failure_stage", "callscope.failure_stage"),
        ("reason", "callscope.reason"),
        ("next_step", "callscope.next_step"),
        ("customer_id", "minivoice.customer_id"),
        ("application_id", "minivoice.application_id"),
        ("direction", "minivoice.direction"),
        ("call_status", "minivoice.call.status"),
    ):
        if call.get(column) is not None:
            attributes[attribute] = str(call[column])
    failed = _is_failure(call)
    return {
        "trace_id": call_trace_id_hex(call_id),
        "span_id": call_root_span_id_hex(call_id),
        "parent_span_id": None,
        "trace_state": None,
        "name": ROOT_SPAN_NAME,
        "kind": "INTERNAL",
        "start_ns": start,
        "end_ns": end,
        "status_code": "ERROR" if failed else "UNSET",
        "status_message": str(call.get("reason") or "") if failed else None,
        "service_name": PIPELINE_SERVICE_NAME,
        "scope_name": "callscope.pipeline",
        "scope_version": None,
        "call_id": call_id,
        "source": "pipeline",
        "attributes": json.dumps(attributes),
        "resource_attributes": json.dumps({"service.name": PIPELINE_SERVICE_NAME}),
        "events": [],
        "links": None,
    }


def otlp_trace(
    call_id: str, spans: Iterable[Mapping[str, Any]], call: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A call's spans as an OTLP/JSON ExportTraceServiceRequest, with the root span included.

    Spans are grouped by resource, then by instrumentation scope, as OTLP requires.
    Duplicate deliveries of one span (same span id) are exported once.
    """
    rows: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    for row in sorted(spans, key=lambda r: (int(r["start_ns"]), str(r["span_id"]))):
        if row["span_id"] in seen:
            continue
        seen.add(row["span_id"])
        rows.append(row)
    root_id = call_root_span_id_hex(call_id)
    if root_id not in seen:
        rows.insert(0, root_span_row(call_id, call, rows))

    resources: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
    for row in rows:
        resource_key = row.get("resource_attributes") or json.dumps(
            {"service.name": row.get("service_name") or "unknown_service"}
        )
        scope_key = (str(row.get("scope_name") or ""), str(row.get("scope_version") or ""))
        resources.setdefault(resource_key, {}).setdefault(scope_key, []).append(_span(row))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": key_values(_json_object(resource_key))},
                "scopeSpans": [
                    {"scope": {"name": name, "version": version}, "spans": spans_out}
                    for (name, version), spans_out in scopes.items()
                ],
            }
            for resource_key, scopes in resources.items()
        ]
    }


def trace_otlp_json(data_dir: Path | str, call_id: str) -> dict[str, Any]:
    """The trace of `call_id` from the data directory's views, as OTLP JSON (see `otlp_trace`).

    Raises TraceNotFound when nothing at all is stored about the call.
    """
    from pipeline.dashboard_queries import call_row, call_spans, open_views

    with open_views(data_dir) as con:
        call = call_row(con, call_id)
        spans = call_spans(con, call_id, call)
    if not spans and call is None:
        raise TraceNotFound(f"no spans and no calls row for call id {call_id!r}")
    return otlp_trace(call_id, spans, call)
