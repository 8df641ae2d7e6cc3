"""OTLP JSON (the OTLP/HTTP JSON encoding) to an `ExportTraceServiceRequest`.

The OTLP JSON encoding is the protobuf JSON mapping with these differences, which this module
handles before handing the rest to protobuf's own `json_format.ParseDict`:

- `traceId`, `spanId`, `parentSpanId` (and links' ids) are hex strings, not base64. ParseDict would
  read them as base64, so they are converted here, and a span with an id of the wrong length is
  rejected (partial success), like a protobuf span with a wrong-length id.
- Field names are lowerCamelCase (snake_case is accepted too, as ParseDict does).
- Enums (`kind`, `status.code`) may be integers; 64-bit integers (`startTimeUnixNano`, `intValue`)
  may be strings or numbers. ParseDict accepts both.
- Unknown fields are ignored (the spec asks receivers to be lenient).

An id that is not hex at all makes the whole request undecodable (400): the sender is not speaking
OTLP JSON. A time over 2**63-1 ns (a valid uint64 that the stored int64 columns cannot hold) makes
the span unusable (partial success), as in the protobuf path (`pipeline.otlp.time_problem`); a
time that is not a uint64 at all is left to ParseDict (400).
"""

from __future__ import annotations

import base64
import string
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline.otlp import INT64_MAX, OTLPDecodeError, Validation

_HEX = frozenset(string.hexdigits)
_TIME_FIELDS = (("startTimeUnixNano", "start_time_unix_nano"), ("endTimeUnixNano", "end_time_unix_nano"))
_ID_FIELDS = (("traceId", "trace_id", 16), ("spanId", "span_id", 8), ("parentSpanId", "parent_span_id", 8))


def _list(container: dict[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    value = container.get(camel, container.get(snake))
    if value is None:
        return []
    if not isinstance(value, list):
        raise OTLPDecodeError(f"{where}.{camel} must be an array, got {type(value).__name__}")
    return value


def _hex_to_base64(value: Any, where: str) -> tuple[str | None, float]:
    """(base64 text for ParseDict, length in bytes) of a hex id; raises if it is not hex.

    An odd number of hex digits gives a fractional length (reported as a wrong length) and no text.
    """
    if value is None or value == "":
        return None, 0
    if not isinstance(value, str) or not _HEX.issuperset(value):
        raise OTLPDecodeError(
            f"{where} must be a hex string (OTLP JSON ids are hex, not base64), got {value!r}"
        )
    if len(value) % 2:
        return None, len(value) / 2
    raw = bytes.fromhex(value)
    return base64.b64encode(raw).decode("ascii"), len(raw)


def _nanos(value: Any) -> int | None:
    """A JSON time (uint64 as a number or a decimal string) as an int; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):  # orjson reads integers over 2**64-1 as floats
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _field(container: dict[str, Any], camel: str, snake: str) -> Any:
    return container.get(camel) if camel in container else container.get(snake)


def _time_problem(span: dict[str, Any], where: str) -> str | None:
    """Why a span's times cannot be stored (over INT64_MAX nanoseconds), or None."""
    for camel, snake in _TIME_FIELDS:
        nanos = _nanos(_field(span, camel, snake))
        if nanos is not None and nanos > INT64_MAX:
            return f"{snake} {nanos} is over 2**63-1"
    for index, event in enumerate(_list(span, "events", "events", where)):
        if isinstance(event, dict):  # anything else: ParseDict's error (400)
            nanos = _nanos(_field(event, "timeUnixNano", "time_unix_nano"))
            if nanos is not None and nanos > INT64_MAX:
                return f"events[{index}].time_unix_nano {nanos} is over 2**63-1"
    return None


def _convert_span(span: dict[str, Any], where: str) -> str | None:
    """Rewrite a span's hex ids as base64 in place; return why the span is unusable, or None."""
    problem = None
    for camel, snake, size in _ID_FIELDS:
        key = camel if camel in span else snake
        if key not in span:
            if size == 16 or camel == "spanId":
                problem = problem or f"{snake} is missing"
            continue
        encoded, length = _hex_to_base64(span[key], f"{where}.{camel}")
        if camel == "parentSpanId":
            if length not in (0, 8):
                problem = problem or f"parent_span_id has {length * 2:g} hex digits, expected 16 or none"
        elif length != int(length):
            problem = problem or f"{snake} has {int(length * 2)} hex digits, expected {size * 2}"
        elif length != size:
            problem = problem or f"{snake} has {int(length)} bytes, expected {size}"
        elif encoded is not None and not any(bytes.fromhex(span[key])):
            problem = problem or f"{snake} is all zeros"
        if encoded is None:
            span.pop(key)
        else:
            span[key] = encoded
    for l_index, link in enumerate(_list(span, "links", "links", where)):
        if not isinstance(link, dict):
            raise OTLPDecodeError(f"{where}.links[{l_index}] must be an object")
        for camel, snake, _size in _ID_FIELDS[:2]:
            key = camel if camel in link else snake
            if key in link:
                encoded, _length = _hex_to_base64(link[key], f"{where}.links[{l_index}].{camel}")
                link[key] = encoded or ""
    return problem or _time_problem(span, where)


def parse_json(body: bytes) -> tuple[ExportTraceServiceRequest, Validation]:
    """Parse an OTLP JSON body. Spans with unusable ids are left out and reported."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OTLPDecodeError(f"body is not valid JSON: {exc}") from exc
    return parse_json_document(document)


def parse_json_document(document: Any) -> tuple[ExportTraceServiceRequest, Validation]:
    """Like `parse_json`, for an already-parsed JSON value (modified in place)."""
    if not isinstance(document, dict):
        raise OTLPDecodeError(
            f"an OTLP JSON ExportTraceServiceRequest is an object, got {type(document).__name__}"
        )
    validation = Validation()
    for r_index, resource_spans in enumerate(_list(document, "resourceSpans", "resource_spans", "$")):
        r_where = f"resourceSpans[{r_index}]"
        if not isinstance(resource_spans, dict):
            raise OTLPDecodeError(f"{r_where} must be an object")
        for s_index, scope_spans in enumerate(_list(resource_spans, "scopeSpans", "scope_spans", r_where)):
            s_where = f"{r_where}.scopeSpans[{s_index}]"
            if not isinstance(scope_spans, dict):
                raise OTLPDecodeError(f"{s_where} must be an object")
            spans = _list(scope_spans, "spans", "spans", s_where)
            kept = []
            for index, span in enumerate(spans):
                where = f"{s_where}.spans[{index}]"
                if not isinstance(span, dict):
                    raise OTLPDecodeError(f"{where} must be an object")
                problem = _convert_span(span, where)
                if problem is None:
                    kept.append(span)
                    validation.accepted += 1
                else:
                    validation.reject(f"{where} (name {span.get('name')!r}): {problem}")
            if len(kept) != len(spans):
                scope_spans["spans"] = kept
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OTLPDecodeError(f"body is not a valid OTLP JSON ExportTraceServiceRequest: {exc}") from exc
    return request, validation
