"""OTLP trace decoding: `ExportTraceServiceRequest` protobuf to span rows (an Arrow table).

Pure: bytes in, an Arrow table in SPAN_SCHEMA out, plus a count of rejected spans with the
reasons. No I/O, no clock (the caller passes `ingested_at_ns`). OTLP JSON is turned into the same
protobuf message first (`pipeline.otlp_json`), so there is one row conversion.

Two steps, because ingest answers before it converts:

1. `parse_protobuf` + `validate_request` on the request path: is the body decodable, which spans
   have unusable ids (rejected, reported as partial success). `prune_rejected` drops those.
2. `request_to_table` off the request path: spans to rows.

Attribute values become JSON with their types kept (string, int, double, bool, array, kvlist);
bytes become base64 strings, and non-finite doubles become the strings "NaN", "Infinity" and
"-Infinity" (as in the protobuf JSON mapping), so every stored JSON text is standard JSON that
DuckDB parses.

Two implementations of step 2, with identical output:

- `pipeline._otlp_fast` (C, built by `pip install -e .`): walks the protobuf wire format of the
  body that upb accepted and writes the Arrow column buffers directly, several times faster. It
  hands anything rare or subtle (a span to reject, a repeated attribute key, a protobuf merge of a
  singular field, ...) back to the Python path. `decode_protobuf` uses it when it is built.
- `request_to_table` (Python, on the parsed message): the fallback when the extension is missing,
  the path for OTLP JSON and imports, and the oracle the C path is tested against
  (tests/pipeline/test_otlp_fast.py).

Times over 2**63-1 ns (the stored columns are int64) make a span unusable, like bad ids.
"""

from __future__ import annotations

import base64
import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import orjson
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from pipeline.schema import (
    CALL_ID_ATTRIBUTE,
    EVENT_TYPE,
    MINIVOICE_COLUMN,
    MINIVOICE_FIELDS,
    MINIVOICE_TYPE,
    SOURCE_ATTRIBUTE,
    SPAN_KINDS,
    SPAN_SCHEMA,
    STATUS_CODES,
)

# ---- the typed `minivoice` column (conversion rules: pipeline/schema.py) -----------------------

#: Field kinds, as the C decoder numbers them (`_otlp_fast.set_minivoice_fields`).
MV_STRING, MV_INT, MV_DOUBLE, MV_BOOL, MV_STRINGS = range(5)
_MV_KIND_OF_TYPE = {
    pa.string(): MV_STRING,
    pa.int64(): MV_INT,
    pa.float64(): MV_DOUBLE,
    pa.bool_(): MV_BOOL,
    pa.list_(pa.string()): MV_STRINGS,
}
#: (span attribute, kind) per MINIVOICE_FIELDS entry, in order.
MINIVOICE_KINDS: tuple[tuple[str, int], ...] = tuple(
    (attribute, _MV_KIND_OF_TYPE[arrow_type]) for _, attribute, arrow_type in MINIVOICE_FIELDS
)
_MV_COUNT = len(MINIVOICE_KINDS)
#: The AnyValue case each kind takes as it is (double and string arrays: `minivoice_value`).
_MV_SAME_CASE = {MV_STRING: "string_value", MV_INT: "int_value", MV_BOOL: "bool_value"}
#: attribute -> (position in MINIVOICE_FIELDS, kind, the AnyValue case taken as it is or None)
_MV_INDEX = {
    attribute: (index, kind, _MV_SAME_CASE.get(kind))
    for index, (attribute, kind) in enumerate(MINIVOICE_KINDS)
}


logger = logging.getLogger(__name__)


def _load_fast() -> ModuleType | None:
    # The C decoder is optional: setup.py builds it, and the install succeeds without it.
    try:
        module = importlib.import_module("pipeline._otlp_fast")
    except ImportError:
        return None
    if not hasattr(module, "set_minivoice_fields"):  # built from an older _otlp_fast.c
        logger.warning("pipeline._otlp_fast is out of date (reinstall: pip install -e .); not using it")
        return None
    module.set_minivoice_fields(MINIVOICE_KINDS)
    return module


_otlp_fast = _load_fast()

#: At most this many rejection reasons are kept per request (the count is always exact).
MAX_REASONS = 20
#: Stored times are int64 nanoseconds; OTLP's are uint64.
INT64_MAX = 2**63 - 1


class OTLPDecodeError(ValueError):
    """The request body is not a valid ExportTraceServiceRequest. The message says why."""


@dataclass(slots=True)
class Validation:
    """What `validate_request` found: how many spans are acceptable, and why others are not."""

    accepted: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str, count: int = 1) -> None:
        """Count `count` rejected spans, keeping the first MAX_REASONS reasons."""
        self.rejected += count
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)

    def message(self) -> str:
        """The reasons as one line, for `partial_success.error_message`."""
        if not self.reasons:
            return ""
        more = self.rejected - len(self.reasons)
        return "; ".join(self.reasons) + (f"; and {more} more" if more > 0 else "")


@dataclass(slots=True)
class DecodedBatch:
    """Accepted span rows, and how many spans were rejected and why."""

    table: pa.Table
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        """Number of span rows."""
        return self.table.num_rows

    def rejection_message(self) -> str:
        """The reasons as one line."""
        return "; ".join(self.reasons[:5]) + ("; ..." if len(self.reasons) > 5 else "")


def _double(number: float) -> float | str:
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as the plain JSON-able Python value it stands for."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return _double(value.double_value)
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def attributes_dict(attributes: Any) -> dict[str, Any]:
    """OTLP KeyValue list to a dict. A repeated key keeps its last value."""
    result: dict[str, Any] = {}
    for kv in attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        # Strings, ints and bools are nearly all attributes: handle them inline.
        if kind == "string_value":
            result[kv.key] = value.string_value
        elif kind == "int_value":
            result[kv.key] = value.int_value
        elif kind == "bool_value":
            result[kv.key] = value.bool_value
        else:
            result[kv.key] = any_value(value)
    return result


def minivoice_value(value: AnyValue, kind: int) -> Any:
    """The typed value of one attribute for a field of `kind` (MV_*), or None if it does not convert."""
    which = value.WhichOneof("value")
    if kind == MV_STRING:
        return value.string_value if which == "string_value" else None
    if kind == MV_INT:
        return value.int_value if which == "int_value" else None
    if kind == MV_DOUBLE:
        if which == "double_value":
            return value.double_value
        return float(value.int_value) if which == "int_value" else None
    if kind == MV_BOOL:
        return value.bool_value if which == "bool_value" else None
    if which != "array_value":
        return None
    items = value.array_value.values
    if all(item.WhichOneof("value") == "string_value" for item in items):
        return [item.string_value for item in items]
    return None


def span_attributes(attributes: Any) -> tuple[dict[str, Any], list[Any]]:
    """`attributes_dict` of a span's attributes, and its `minivoice` field values in one pass."""
    result: dict[str, Any] = {}
    typed: list[Any] = [None] * _MV_COUNT
    index = _MV_INDEX
    for kv in attributes:
        key = kv.key
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            result[key] = value.string_value
        elif kind == "int_value":
            result[key] = value.int_value
        elif kind == "bool_value":
            result[key] = value.bool_value
        else:
            result[key] = any_value(value)
        field_at = index.get(key)
        if field_at is not None:  # a repeated key: the last value wins, as in the dict
            position, field_kind, same = field_at
            if same is None:  # double, list of strings
                typed[position] = minivoice_value(value, field_kind)
            else:  # the value just read, when its case is the field's
                typed[position] = result[key] if kind == same else None
    return result, typed


def minivoice_array(rows: list[list[Any]]) -> pa.StructArray:
    """The `minivoice` column from per-span field values (`span_attributes`); never null itself."""
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [()] * _MV_COUNT
    children = [pa.array(values, field.type) for values, field in zip(columns, MINIVOICE_TYPE, strict=True)]
    return pa.StructArray.from_arrays(children, fields=list(MINIVOICE_TYPE))


def to_json(value: dict[str, Any] | list[Any]) -> bytes:
    """Compact standard JSON (UTF-8 bytes)."""
    return orjson.dumps(value)


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Parse protobuf bytes, turning protobuf's error into OTLPDecodeError."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise OTLPDecodeError(f"body is not a valid protobuf ExportTraceServiceRequest: {exc}") from exc
    return request


def _id_problem(raw: bytes, size: int, name: str) -> str | None:
    if len(raw) != size:
        return f"{name} has {len(raw)} bytes, expected {size}"
    if not any(raw):
        return f"{name} is all zeros"
    return None


def span_problem(trace_id: bytes, span_id: bytes, parent_span_id: bytes) -> str | None:
    """Why a span's ids make it unusable (OTLP: 16-byte trace id, 8-byte span id), or None."""
    lengths_ok = len(trace_id) == 16 and len(span_id) == 8 and len(parent_span_id) in (0, 8)
    if lengths_ok and any(trace_id) and any(span_id):
        return None
    problem = _id_problem(trace_id, 16, "trace_id") or _id_problem(span_id, 8, "span_id")
    if problem is None and len(parent_span_id) not in (0, 8):
        problem = f"parent_span_id has {len(parent_span_id)} bytes, expected 8 or none"
    return problem


def time_problem(span: Any) -> str | None:
    """Why a span's times cannot be stored (over INT64_MAX nanoseconds), or None."""
    if span.start_time_unix_nano > INT64_MAX:
        return f"start_time_unix_nano {span.start_time_unix_nano} is over 2**63-1"
    if span.end_time_unix_nano > INT64_MAX:
        return f"end_time_unix_nano {span.end_time_unix_nano} is over 2**63-1"
    for index, event in enumerate(span.events):
        if event.time_unix_nano > INT64_MAX:
            return f"events[{index}].time_unix_nano {event.time_unix_nano} is over 2**63-1"
    return None


def _times_ok(span: Any) -> bool:
    if span.start_time_unix_nano > INT64_MAX or span.end_time_unix_nano > INT64_MAX:
        return False
    events = span.events
    return not events or all(event.time_unix_nano <= INT64_MAX for event in events)


def validate_request(request: ExportTraceServiceRequest, body: bytes | None = None) -> Validation:
    """Count acceptable spans and describe rejected ones (bad ids). Does not modify the request.

    `body`: the protobuf bytes `request` was parsed from, if any: the C decoder then counts the
    spans (the Python loop runs only when some span is unusable).
    """
    if body is not None and _otlp_fast is not None:
        count = _otlp_fast.count_valid(body)
        if count is not None:
            return Validation(accepted=count)
    result = Validation()
    for r_index, resource_spans in enumerate(request.resource_spans):
        for s_index, scope_spans in enumerate(resource_spans.scope_spans):
            for index, span in enumerate(scope_spans.spans):
                trace_id = span.trace_id
                span_id = span.span_id
                if len(trace_id) == 16 and len(span_id) == 8 and any(trace_id) and any(span_id):
                    parent = span.parent_span_id
                    if (not parent or len(parent) == 8) and _times_ok(span):
                        result.accepted += 1
                        continue
                problem = span_problem(trace_id, span_id, span.parent_span_id) or time_problem(span)
                where = f"resource_spans[{r_index}].scope_spans[{s_index}].spans[{index}]"
                result.reject(f"{where} (name {span.name!r}): {problem}")
    return result


def prune_rejected(request: ExportTraceServiceRequest) -> None:
    """Remove, in place, every span `validate_request` would reject."""
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            keep = [
                span
                for span in scope_spans.spans
                if span_problem(span.trace_id, span.span_id, span.parent_span_id) is None and _times_ok(span)
            ]
            if len(keep) != len(scope_spans.spans):
                kept = [type(span)() for span in keep]
                for copy, span in zip(kept, keep, strict=True):
                    copy.CopyFrom(span)
                del scope_spans.spans[:]
                scope_spans.spans.extend(kept)


_KIND_NAMES = SPAN_KINDS
_STATUS_NAMES = STATUS_CODES


def request_to_table(request: ExportTraceServiceRequest, ingested_at_ns: int) -> DecodedBatch:
    """Flatten a request into span rows. Spans with bad ids are rejected, not stored."""
    trace_ids: list[str] = []
    span_ids: list[str] = []
    parent_ids: list[str | None] = []
    trace_states: list[str | None] = []
    names: list[str] = []
    kinds: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    status_codes: list[str] = []
    status_messages: list[str | None] = []
    service_names: list[str | None] = []
    scope_names: list[str | None] = []
    scope_versions: list[str | None] = []
    call_ids: list[str | None] = []
    sources: list[str | None] = []
    attributes_json: list[bytes] = []
    resource_json: list[bytes] = []
    links_json: list[bytes | None] = []
    event_offsets: list[int] = [0]
    event_times: list[int] = []
    event_names: list[str] = []
    event_attributes: list[bytes] = []
    minivoice_rows: list[list[Any]] = []
    rejected = Validation()
    n_kinds = len(_KIND_NAMES)
    n_status = len(_STATUS_NAMES)

    for resource_spans in request.resource_spans:
        resource = attributes_dict(resource_spans.resource.attributes)
        resource_text = to_json(resource)
        service_name = resource.get("service.name")
        service_name = str(service_name) if service_name is not None else None
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            scope_name = scope.name or None
            scope_version = scope.version or None
            for span in scope_spans.spans:
                trace_id = span.trace_id
                span_id = span.span_id
                parent = span.parent_span_id
                problem = span_problem(trace_id, span_id, parent)
                if problem is None and not _times_ok(span):
                    problem = time_problem(span)
                if problem is not None:
                    rejected.reject(f"span {span.name!r}: {problem}")
                    continue
                attributes, typed = span_attributes(span.attributes)
                minivoice_rows.append(typed)
                call_id = attributes.get(CALL_ID_ATTRIBUTE)
                source = attributes.get(SOURCE_ATTRIBUTE)
                trace_ids.append(trace_id.hex())
                span_ids.append(span_id.hex())
                parent_ids.append(parent.hex() if parent else None)
                trace_states.append(span.trace_state or None)
                names.append(span.name)
                kind = span.kind
                kinds.append(_KIND_NAMES[kind] if 0 <= kind < n_kinds else "UNSPECIFIED")
                starts.append(span.start_time_unix_nano)
                ends.append(span.end_time_unix_nano)
                status = span.status
                code = status.code
                status_codes.append(_STATUS_NAMES[code] if 0 <= code < n_status else "UNSET")
                status_messages.append(status.message or None)
                service_names.append(service_name)
                scope_names.append(scope_name)
                scope_versions.append(scope_version)
                call_ids.append(str(call_id) if call_id is not None else None)
                sources.append(str(source) if source is not None else None)
                attributes_json.append(to_json(attributes))
                resource_json.append(resource_text)
                events = span.events
                if events:
                    for event in events:
                        event_times.append(event.time_unix_nano)
                        event_names.append(event.name)
                        event_attributes.append(to_json(attributes_dict(event.attributes)))
                event_offsets.append(len(event_times))
                links = span.links
                links_json.append(
                    to_json(
                        [
                            {
                                "trace_id": link.trace_id.hex(),
                                "span_id": link.span_id.hex(),
                                "attributes": attributes_dict(link.attributes),
                            }
                            for link in links
                        ]
                    )
                    if links
                    else None
                )

    events_array = pa.ListArray.from_arrays(
        pa.array(event_offsets, pa.int32()),
        pa.StructArray.from_arrays(
            [
                pa.array(event_times, pa.int64()),
                pa.array(event_names, pa.string()),
                _json_array(event_attributes),
            ],
            fields=list(EVENT_TYPE),
        ),
        type=pa.list_(EVENT_TYPE),
    )
    arrays = {
        "trace_id": pa.array(trace_ids, pa.string()),
        "span_id": pa.array(span_ids, pa.string()),
        "parent_span_id": pa.array(parent_ids, pa.string()),
        "trace_state": pa.array(trace_states, pa.string()),
        "name": pa.array(names, pa.string()),
        "kind": pa.array(kinds, pa.string()),
        "start_ns": pa.array(starts, pa.int64()),
        "end_ns": pa.array(ends, pa.int64()),
        "status_code": pa.array(status_codes, pa.string()),
        "status_message": pa.array(status_messages, pa.string()),
        "service_name": pa.array(service_names, pa.string()),
        "scope_name": pa.array(scope_names, pa.string()),
        "scope_version": pa.array(scope_versions, pa.string()),
        "call_id": pa.array(call_ids, pa.string()),
        "source": pa.array(sources, pa.string()),
        "attributes": _json_array(attributes_json),
        "resource_attributes": _json_array(resource_json),
        "events": events_array,
        "links": _json_array(links_json),
        MINIVOICE_COLUMN: minivoice_array(minivoice_rows),
    }
    table = _span_table(arrays, len(trace_ids), ingested_at_ns)
    return DecodedBatch(table=table, rejected=rejected.rejected, reasons=rejected.reasons)


def _span_table(arrays: dict[str, pa.Array], count: int, ingested_at_ns: int | pa.Array) -> pa.Table:
    if isinstance(ingested_at_ns, int):
        ingested_at_ns = pa.repeat(pa.scalar(ingested_at_ns, pa.int64()), count)
    arrays["ingested_at_ns"] = ingested_at_ns
    # A column added to SPAN_SCHEMA that the decoders do not fill yet is stored as nulls.
    columns = [arrays.get(f.name, pa.nulls(count, f.type)) for f in SPAN_SCHEMA]
    return pa.Table.from_arrays(columns, schema=SPAN_SCHEMA)


def _json_array(values: list[bytes] | list[bytes | None]) -> pa.Array:
    # orjson gives UTF-8 bytes; Arrow's binary->string cast validates UTF-8 in C, no Python decode.
    return pa.array(values, pa.binary()).cast(pa.string())


#: The C decoder's string columns, in the order `_otlp_fast.walk` returns them.
_FAST_STRING_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "name",
    "kind",
    "status_code",
    "status_message",
    "service_name",
    "scope_name",
    "scope_version",
    "call_id",
    "source",
    "attributes",
    "resource_attributes",
    "links",
    "event_name",
    "event_attributes",
)


def _buffers_array(parts: tuple[Any, Any, Any, int], count: int) -> pa.Array:
    # (validity bitmap or None, int32 offsets, data, null count): buffers the C decoder owns
    validity, offsets, data, nulls = parts
    buffers = [
        None if validity is None else pa.py_buffer(validity),
        pa.py_buffer(offsets),
        pa.py_buffer(data),
    ]
    array = pa.Array.from_buffers(pa.string(), count, buffers, null_count=nulls)
    # upb checked the UTF-8 already; this full check (offsets and UTF-8, ~0.1 us/span) makes sure a
    # decoder bug can never store a column that DuckDB cannot read.
    array.validate(full=True)
    return array


class _ExportedArray:
    """The C decoder's `minivoice` column: an "arrow_array" PyCapsule, with the type it has."""

    __slots__ = ("capsule",)

    def __init__(self, capsule: object) -> None:
        self.capsule = capsule

    def __arrow_c_array__(self, requested_schema: object = None) -> tuple[object, object]:
        return MINIVOICE_TYPE.__arrow_c_schema__(), self.capsule


def _minivoice_import(capsule: object) -> pa.Array:
    # The Arrow PyCapsule interface: one zero-copy import for the whole struct (from_buffers per
    # field costs ~6 us each, 40 fields).
    array = pa.array(_ExportedArray(capsule))
    # The same full check as the string columns (offsets, UTF-8 of every string field).
    array.validate(full=True)
    return array


def fast_request_to_table(body: bytes, ingested_at_ns: int) -> DecodedBatch | None:
    """`request_to_table` by the C decoder, from the bytes upb parsed; None when it defers to Python.

    Only call it on a body that `parse_protobuf` accepted. None also when the extension is missing.
    """
    if _otlp_fast is None:
        return None
    result = _otlp_fast.walk(body)
    if result is None:
        return None
    table = _fast_table(result, ingested_at_ns)
    return None if table is None else DecodedBatch(table=table)


def fast_records_to_table(records: Sequence[tuple[bytes, int]]) -> DecodedBatch | None:
    """WAL records (protobuf bodies that `parse_protobuf` accepted, with their ingested_at_ns) as one
    table, rows in order: what `decode_protobuf(body, t, parsed_before=True)` of each, concatenated,
    gives. One C walk for them all, so the per-request Arrow work (~0.5 us/span for 512-span
    requests) is paid once. None when any record defers to Python (then decode them one by one).
    """
    if _otlp_fast is None:
        return None
    result = _otlp_fast.walk_records(records)
    if result is None:
        return None
    *columns, ingested_at = result
    count = columns[0]
    table = _fast_table(
        tuple(columns),
        pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(ingested_at)]),
    )
    return None if table is None else DecodedBatch(table=table)


def _fast_table(result: tuple[Any, ...], ingested_at_ns: int | pa.Array) -> pa.Table | None:
    """The table of `_otlp_fast.walk`'s columns; None if Arrow finds them invalid."""
    count, strings, starts, ends, event_offsets, event_count, event_times, minivoice = result
    try:
        arrays = {
            name: _buffers_array(parts, event_count if name.startswith("event_") else count)
            for name, parts in zip(_FAST_STRING_COLUMNS, strings, strict=True)
        }
        arrays[MINIVOICE_COLUMN] = _minivoice_import(minivoice)
    except pa.ArrowInvalid as exc:  # bytes upb never saw (or a decoder bug): the Python path decides
        logger.warning("C decoder output rejected (%s); using the Python path", exc)
        return None
    arrays["start_ns"] = pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(starts)])
    arrays["end_ns"] = pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(ends)])
    events = pa.StructArray.from_arrays(
        [
            pa.Array.from_buffers(pa.int64(), event_count, [None, pa.py_buffer(event_times)]),
            arrays.pop("event_name"),
            arrays.pop("event_attributes"),
        ],
        fields=list(EVENT_TYPE),
    )
    arrays["events"] = pa.ListArray.from_arrays(
        pa.Array.from_buffers(pa.int32(), count + 1, [None, pa.py_buffer(event_offsets)]),
        events,
        type=pa.list_(EVENT_TYPE),
    )
    return _span_table(arrays, count, ingested_at_ns)


_warned_slow = False


def decode_protobuf(body: bytes, ingested_at_ns: int, *, parsed_before: bool = False) -> DecodedBatch:
    """Protobuf bytes to span rows (the C decoder when it is built, else the Python path).

    `parsed_before`: these exact bytes were accepted by `parse_protobuf` already (a write-ahead-log
    record: validated before it was logged, checksummed since), so the C decoder may skip parsing
    them again; the Python path, when needed, still parses them.
    """
    global _warned_slow  # noqa: PLW0603 - warn once per process
    request = None if parsed_before and _otlp_fast is not None else parse_protobuf(body)
    if _otlp_fast is None:
        if not _warned_slow:
            _warned_slow = True
            logger.warning(
                "pipeline._otlp_fast is not built (reinstall with a C compiler: pip install -e .); "
                "decoding OTLP with the pure-Python path, several times slower"
            )
    else:
        batch = fast_request_to_table(body, ingested_at_ns)
        if batch is not None:
            return batch
    return request_to_table(request or parse_protobuf(body), ingested_at_ns)


def empty_table() -> pa.Table:
    """A table with SPAN_SCHEMA and no rows."""
    return SPAN_SCHEMA.empty_table()
