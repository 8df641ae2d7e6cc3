"""OTLP trace decoding: `ExportTraceServiceRequest` (protobuf bytes or OTLP JSON) to span rows.

Pure: bytes in, an Arrow table in SPAN_SCHEMA out, plus a count of rejected spans with the
reasons. No I/O, no clock (the caller passes `ingested_at_ns`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from pipeline.schema import CALL_ID_ATTRIBUTE, SOURCE_ATTRIBUTE, SPAN_KINDS, SPAN_SCHEMA, STATUS_CODES


class OTLPDecodeError(ValueError):
    """The request body is not a valid ExportTraceServiceRequest. The message says why."""


@dataclass(slots=True)
class DecodedBatch:
    """Accepted span rows, and how many spans were rejected and why."""

    table: pa.Table
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.table.num_rows

    def rejection_message(self) -> str:
        return "; ".join(self.reasons[:5]) + ("; ..." if len(self.reasons) > 5 else "")


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as the plain JSON-able Python value it stands for."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind)


def attributes_dict(attributes: Any) -> dict[str, Any]:
    """OTLP KeyValue list to a dict. A repeated key keeps its last value."""
    result: dict[str, Any] = {}
    kv: KeyValue
    for kv in attributes:
        result[kv.key] = any_value(kv.value)
    return result


def _json(value: dict[str, Any] | list[Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Parse protobuf bytes, turning protobuf's error into OTLPDecodeError."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise OTLPDecodeError(f"body is not a valid protobuf ExportTraceServiceRequest: {exc}") from exc
    return request


def request_to_table(request: ExportTraceServiceRequest, ingested_at_ns: int) -> DecodedBatch:
    """Flatten a request into span rows. Spans with bad ids are rejected, not stored."""
    columns: dict[str, list[Any]] = {name: [] for name in SPAN_SCHEMA.names}
    rejected = 0
    reasons: list[str] = []
    for resource_spans in request.resource_spans:
        resource = attributes_dict(resource_spans.resource.attributes)
        resource_json = _json(resource)
        service_name = resource.get("service.name")
        service_name = str(service_name) if service_name is not None else None
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name or None
            scope_version = scope_spans.scope.version or None
            for span in scope_spans.spans:
                problem = _id_problem(span.trace_id, 16, "trace_id") or _id_problem(
                    span.span_id, 8, "span_id"
                )
                if problem is None and span.parent_span_id and len(span.parent_span_id) != 8:
                    problem = f"parent_span_id has {len(span.parent_span_id)} bytes, expected 8 or none"
                if problem is not None:
                    rejected += 1
                    if len(reasons) < 20:
                        reasons.append(f"span {span.name!r}: {problem}")
                    continue
                attributes = attributes_dict(span.attributes)
                call_id = attributes.get(CALL_ID_ATTRIBUTE)
                source = attributes.get(SOURCE_ATTRIBUTE)
                columns["trace_id"].append(span.trace_id.hex())
                columns["span_id"].append(span.span_id.hex())
                columns["parent_span_id"].append(span.parent_span_id.hex() or None)
                columns["trace_state"].append(span.trace_state or None)
                columns["name"].append(span.name)
                columns["kind"].append(
                    SPAN_KINDS[span.kind] if 0 <= span.kind < len(SPAN_KINDS) else "UNSPECIFIED"
                )
                columns["start_ns"].append(span.start_time_unix_nano)
                columns["end_ns"].append(span.end_time_unix_nano)
                code = span.status.code
                columns["status_code"].append(
                    STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else "UNSET"
                )
                columns["status_message"].append(span.status.message or None)
                columns["service_name"].append(service_name)
                columns["scope_name"].append(scope_name)
                columns["scope_version"].append(scope_version)
                columns["call_id"].append(str(call_id) if call_id is not None else None)
                columns["source"].append(str(source) if source is not None else None)
                columns["attributes"].append(_json(attributes))
                columns["resource_attributes"].append(resource_json)
                columns["events"].append(
                    [
                        {
                            "time_ns": event.time_unix_nano,
                            "name": event.name,
                            "attributes": _json(attributes_dict(event.attributes)),
                        }
                        for event in span.events
                    ]
                )
                columns["links"].append(
                    _json(
                        [
                            {
                                "trace_id": link.trace_id.hex(),
                                "span_id": link.span_id.hex(),
                                "attributes": attributes_dict(link.attributes),
                            }
                            for link in span.links
                        ]
                    )
                    if span.links
                    else None
                )
                columns["ingested_at_ns"].append(ingested_at_ns)
    table = pa.Table.from_pydict(columns, schema=SPAN_SCHEMA)
    return DecodedBatch(table=table, rejected=rejected, reasons=reasons)


def _id_problem(raw: bytes, size: int, name: str) -> str | None:
    if len(raw) != size:
        return f"{name} has {len(raw)} bytes, expected {size}"
    if not any(raw):
        return f"{name} is all zeros"
    return None


def decode_protobuf(body: bytes, ingested_at_ns: int) -> DecodedBatch:
    """Protobuf bytes to span rows."""
    return request_to_table(parse_protobuf(body), ingested_at_ns)
