"""The C decoder (`pipeline._otlp_fast`) against the Python path, its oracle.

- Random ExportTraceServiceRequests (hypothesis: every AnyValue kind, unicode with control and
  astral characters, int64 extremes, NaN/inf/-0.0/subnormals, nested arrays and kvlists, repeated
  keys, events, links, status, several resources and scopes, bad ids, times over int64, the typed
  `minivoice` column's attributes with values of the right and of every wrong type):
  `decode_protobuf` (C, deferring to Python when it must) gives exactly the Python path's table,
  rejections included; on requests with nothing to defer, the C path itself is what answered.
- Wire-format cases serialization never makes (a singular message sent twice, a oneof set twice,
  wrong wire types, unknown groups, enum overflow): the same table as upb + Python.
- Fuzz: thousands of mutated requests that upb accepts: never a crash, always the Python result.
- Floats: the C formatter writes what orjson writes.
"""

from __future__ import annotations

import contextlib
import math
import random
import struct
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from pipeline import otlp
from pipeline.otlp import (
    INT64_MAX,
    OTLPDecodeError,
    decode_protobuf,
    fast_request_to_table,
    parse_protobuf,
    request_to_table,
    validate_request,
)
from pipeline.samples import sample_request
from pipeline.schema import MINIVOICE_COLUMN, MINIVOICE_FIELDS, MINIVOICE_TYPE

fast = otlp._otlp_fast
needs_fast = pytest.mark.skipif(fast is None, reason="pipeline._otlp_fast is not built")


def test_extension_is_built() -> None:
    """`pip install -e .` builds the C decoder (setup.py); without it ingest is several times slower."""
    assert fast is not None, "pipeline._otlp_fast is missing: reinstall with `pip install -e .` (needs gcc)"


# ---- strategies ------------------------------------------------------------------------------

# Text with what JSON escaping must get right: quotes, backslashes, every control character, DEL,
# non-ASCII, astral characters (no surrogates: protobuf strings are valid UTF-8).
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
        st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\n", "\t", "\u2028", "😀", "é"]),
    ),
    max_size=12,
)
#: Attributes of the typed `minivoice` column: the first field of each kind, and a few more.
MV_KIND_OF = dict(otlp.MINIVOICE_KINDS)
MV_KEYS = sorted(
    {next(a for a, k in otlp.MINIVOICE_KINDS if k == kind) for kind in set(MV_KIND_OF.values())}
    | {"minivoice.close.code", "minivoice.answer_url.latency_ms", "minivoice.stream.tracks"}
)
# Few distinct keys, so repeated keys happen; the promoted ones and the typed ones among them.
KEYS = st.one_of(
    st.sampled_from(["a", "b", "minivoice.call_id", "callscope.source", "service.name", ""]),
    st.sampled_from(MV_KEYS),
    TEXT,
)
INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**53 + 1]))
DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e16, 1e-5, 1e-6, 5e-324, 1.7976931348623157e308, 0.1, 100.0]),
)


PROMOTED = ("minivoice.call_id", "callscope.source", "service.name")


def _scalar_value(draw: Any) -> AnyValue:
    kind = draw(st.sampled_from(["string", "bool", "int", "double", "bytes", "empty"]))
    if kind == "string":
        return AnyValue(string_value=draw(TEXT))
    if kind == "bool":
        return AnyValue(bool_value=draw(st.booleans()))
    if kind == "int":
        return AnyValue(int_value=draw(INT64))
    if kind == "double":
        return AnyValue(double_value=draw(DOUBLES))
    if kind == "bytes":
        return AnyValue(bytes_value=draw(st.binary(max_size=10)))
    return AnyValue()


@st.composite
def any_values(draw: Any, plain: bool, depth: int = 0) -> AnyValue:
    """An AnyValue of any kind, arrays and kvlists nested up to 3 deep."""
    kind = draw(
        st.sampled_from(["scalar", "scalar", "scalar", "array", "kvlist"] if depth < 3 else ["scalar"])
    )
    if kind == "scalar":
        return _scalar_value(draw)
    value = AnyValue()
    if kind == "array":
        value.array_value.SetInParent()
        value.array_value.values.extend(draw(st.lists(any_values(plain, depth + 1), max_size=3)))
    else:
        value.kvlist_value.SetInParent()
        value.kvlist_value.values.extend(draw(key_values(plain, depth + 1)))
    return value


def _string_array(draw: Any) -> AnyValue:
    """An array of strings (the list<string> fields' type), sometimes with one odd element."""
    value = AnyValue()
    value.array_value.SetInParent()
    items = [AnyValue(string_value=text) for text in draw(st.lists(TEXT, max_size=3))]
    if draw(st.integers(0, 3)) == 0:
        items.insert(draw(st.integers(0, len(items))), _scalar_value(draw))
    value.array_value.values.extend(items)
    return value


def _typed_value(draw: Any, kind: int) -> AnyValue:
    """A value of the type a `minivoice` field of `kind` takes (a double field also takes ints)."""
    if kind == otlp.MV_STRING:
        return AnyValue(string_value=draw(TEXT))
    if kind == otlp.MV_INT:
        return AnyValue(int_value=draw(INT64))
    if kind == otlp.MV_DOUBLE:
        if draw(st.booleans()):
            return AnyValue(int_value=draw(INT64))
        return AnyValue(double_value=draw(DOUBLES))
    if kind == otlp.MV_BOOL:
        return AnyValue(bool_value=draw(st.booleans()))
    return _string_array(draw)


@st.composite
def key_values(draw: Any, plain: bool, depth: int = 0, max_size: int = 4) -> list[KeyValue]:
    """A KeyValue list; a KeyValue may lack its value. Not `plain`: keys repeat, and the promoted
    keys (call id, source, service.name) get any type. `plain`: unique keys, promoted ones strings."""
    keys = draw(st.lists(KEYS, max_size=max_size, unique=plain))
    result = []
    for key in keys:
        if draw(st.integers(0, 9)) == 0:
            result.append(KeyValue(key=key))
        elif plain and key in PROMOTED:
            result.append(KeyValue(key=key, value=AnyValue(string_value=draw(TEXT))))
        elif key in MV_KIND_OF and draw(st.booleans()):  # else any value: mostly the wrong type
            result.append(KeyValue(key=key, value=_typed_value(draw, MV_KIND_OF[key])))
        else:
            result.append(KeyValue(key=key, value=draw(any_values(plain, depth))))
    return result


def _ids(draw: Any, size: int, plain: bool) -> bytes:
    choice = draw(st.integers(2 if plain else 0, 19))
    if choice == 0:
        return bytes(size)  # all zeros: rejected
    if choice == 1:
        return draw(st.binary(max_size=size + 2))  # usually a wrong length: rejected
    return b"\x01" + draw(st.binary(min_size=size - 1, max_size=size - 1))


VALID_TIMES = st.one_of(st.integers(0, INT64_MAX), st.sampled_from([0, INT64_MAX]))
TIMES = st.one_of(VALID_TIMES, st.sampled_from([INT64_MAX + 1, 2**64 - 1]))
# enums are int32 on the wire; out-of-range values are legal (open enums)
ENUMS = st.one_of(st.integers(-1, 7), st.sampled_from([-(2**31), 2**31 - 1]))


@st.composite
def spans(draw: Any, plain: bool) -> Span:
    """A Span; unless `plain`, sometimes with bad ids or times (rejected by both paths)."""
    times = VALID_TIMES if plain else TIMES
    span = Span(
        trace_id=_ids(draw, 16, plain),
        span_id=_ids(draw, 8, plain),
        parent_span_id=b"" if draw(st.booleans()) else _ids(draw, 8, plain),
        trace_state=draw(st.sampled_from(["", "", "k=v"])),
        name=draw(TEXT),
        kind=draw(ENUMS),  # type: ignore[arg-type]
        start_time_unix_nano=draw(times),
        end_time_unix_nano=draw(times),
        flags=draw(st.integers(0, 2**32 - 1)),
    )
    span.attributes.extend(draw(key_values(plain, max_size=6)))
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(time_unix_nano=draw(times), name=draw(TEXT))
        event.attributes.extend(draw(key_values(plain)))
    for _ in range(draw(st.integers(0, 2))):
        link = span.links.add(
            trace_id=draw(st.binary(max_size=16)), span_id=draw(st.binary(max_size=8)), trace_state="x"
        )
        link.attributes.extend(draw(key_values(plain)))
    if draw(st.booleans()):
        span.status.CopyFrom(Status(code=draw(ENUMS), message=draw(TEXT)))  # type: ignore[arg-type]
    return span


@st.composite
def requests(draw: Any, plain: bool = False) -> ExportTraceServiceRequest:
    """Several resources (with or without a Resource), scopes (with or without a scope), spans."""
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1 if plain else 0, 3))):
        resource_spans = request.resource_spans.add()
        if draw(st.booleans()):
            resource_spans.resource.attributes.extend(draw(key_values(plain)))
        for _ in range(draw(st.integers(1 if plain else 0, 2))):
            scope_spans = resource_spans.scope_spans.add()
            if draw(st.booleans()):
                scope_spans.scope.name = draw(TEXT)
                scope_spans.scope.version = draw(st.sampled_from(["", "1.0"]))
            scope_spans.spans.extend(draw(st.lists(spans(plain), min_size=1 if plain else 0, max_size=3)))
    return request


# ---- helpers ---------------------------------------------------------------------------------


def _python(body: bytes) -> otlp.DecodedBatch:
    return request_to_table(parse_protobuf(body), 42)


def comparable(table: pa.Table) -> pa.Table:
    """`table` with the `minivoice` doubles as their bit patterns: Arrow's equality says NaN != NaN,
    and -0.0 == 0.0; bits tell both apart exactly."""
    column = table[MINIVOICE_COLUMN].combine_chunks()
    children = [
        column.field(index).view(pa.int64()) if field.type == pa.float64() else column.field(index)
        for index, field in enumerate(MINIVOICE_TYPE)
    ]
    names = [field.name for field in MINIVOICE_TYPE]
    bits = pa.StructArray.from_arrays(children, names=names, mask=column.is_null())
    return table.set_column(table.schema.get_field_index(MINIVOICE_COLUMN), MINIVOICE_COLUMN, bits)


def assert_tables_equal(got: pa.Table, expected: pa.Table) -> None:
    assert got.schema == expected.schema
    got, expected = comparable(got), comparable(expected)
    if not got.equals(expected):  # a readable diff first
        assert got.to_pylist() == expected.to_pylist()
    assert got.equals(expected)


def assert_same(body: bytes) -> otlp.DecodedBatch | None:
    """decode_protobuf (C where it can) equals the Python path; returns the C-only result."""
    try:
        expected = _python(body)
    except OTLPDecodeError:
        with pytest.raises(OTLPDecodeError):
            decode_protobuf(body, 42)
        return None
    got = decode_protobuf(body, 42)
    assert_tables_equal(got.table, expected.table)
    assert (got.rejected, got.reasons) == (expected.rejected, expected.reasons)
    request = parse_protobuf(body)
    assert validate_request(request, body) == validate_request(request)
    only_c = fast_request_to_table(body, 42)
    if only_c is not None:
        assert_tables_equal(only_c.table, expected.table)
        assert only_c.rejected == 0
    return only_c


# ---- properties ------------------------------------------------------------------------------


@needs_fast
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_random_requests_decode_exactly_as_the_python_path(request: ExportTraceServiceRequest) -> None:
    """Anything (repeated keys, bad ids and times, odd types): C with its fallback == Python."""
    assert_same(request.SerializeToString())


@needs_fast
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(plain=True))
def test_plain_requests_are_decoded_by_c(request: ExportTraceServiceRequest) -> None:
    """Nothing to defer (valid spans, unique keys, string promoted values): C answers, == Python."""
    only_c = assert_same(request.SerializeToString())
    assert only_c is not None, "the C decoder deferred a request it should handle"
    assert only_c.accepted == sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def _records_table(records: list[tuple[bytes, int]]) -> pa.Table:
    """What the roll-up stored before walk_records: each record by the Python path, concatenated."""
    tables = [request_to_table(parse_protobuf(body), time).table for body, time in records]
    return pa.concat_tables(tables) if tables else otlp.empty_table()


@needs_fast
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(requests(plain=True), st.integers(0, INT64_MAX)), max_size=4))
def test_records_walked_at_once_are_their_requests_concatenated(
    records: list[tuple[ExportTraceServiceRequest, int]],
) -> None:
    """walk_records (the roll-up: a whole WAL file in one walk) == each request decoded, in order."""
    encoded = [(request.SerializeToString(), time) for request, time in records]
    batch = otlp.fast_records_to_table(encoded)
    assert batch is not None, "a request the C decoder handles alone made walk_records defer"
    assert_tables_equal(batch.table, _records_table(encoded))


@needs_fast
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=3))
def test_records_with_anything_defer_or_match(records: list[ExportTraceServiceRequest]) -> None:
    """One record the C path leaves to Python makes the whole walk defer (never a partial table)."""
    encoded = [(request.SerializeToString(), index) for index, request in enumerate(records)]
    encoded = [(body, time) for body, time in encoded if _parses(body)]
    batch = otlp.fast_records_to_table(encoded)
    each = [fast_request_to_table(body, time) for body, time in encoded]
    if batch is None:
        assert any(one is None for one in each)
    else:
        assert all(one is not None for one in each)
        assert_tables_equal(batch.table, _records_table(encoded))


def _parses(body: bytes) -> bool:
    try:
        parse_protobuf(body)
    except OTLPDecodeError:
        return False
    return True


@needs_fast
def test_walk_records_input() -> None:
    empty = otlp.fast_records_to_table([])
    assert empty is not None and empty.accepted == 0 and empty.table.schema == otlp.SPAN_SCHEMA
    with pytest.raises(TypeError):
        fast.walk_records([b"x"])
    with pytest.raises(TypeError):
        fast.walk_records([("not bytes", 1)])
    with pytest.raises(TypeError):
        fast.walk_records(5)
    body = sample_request(7, seed=3).SerializeToString()
    rows = otlp.fast_records_to_table([(body, 5), (body, -1), (b"", 9)])
    assert rows is not None
    assert rows.table["ingested_at_ns"].to_pylist() == [5] * 7 + [-1] * 7


@needs_fast
def test_realistic_batches_take_the_c_path() -> None:
    for seed in range(3):
        body = sample_request(512, seed=seed).SerializeToString()
        only_c = assert_same(body)
        assert only_c is not None
        assert only_c.accepted == 512
        assert fast.count_valid(body) == 512


def _array(*items: AnyValue) -> AnyValue:
    value = AnyValue()
    value.array_value.SetInParent()
    value.array_value.values.extend(items)
    return value


def _kvlist() -> AnyValue:
    value = AnyValue()
    value.kvlist_value.values.add(key="k", value=AnyValue(string_value="v"))
    return value


def S(value: str) -> AnyValue:  # one letter per AnyValue kind keeps CONVERSIONS readable
    return AnyValue(string_value=value)


def N(value: int) -> AnyValue:
    return AnyValue(int_value=value)


def D(value: float) -> AnyValue:
    return AnyValue(double_value=value)


def B(value: bool) -> AnyValue:
    return AnyValue(bool_value=value)


#: (field, attribute value, the field's value): the conversion rules of pipeline/schema.py.
CONVERSIONS = [
    ("event", S("call.answered"), "call.answered"),
    ("event", S(""), ""),
    ("event", N(5), None),
    ("event", B(True), None),
    ("event", D(1.0), None),
    ("event", AnyValue(bytes_value=b"x"), None),
    ("event", _array(S("a")), None),
    ("event", _kvlist(), None),
    ("event", AnyValue(), None),
    ("close_code", N(1000), 1000),
    ("close_code", N(-(2**63)), -(2**63)),
    ("close_code", D(1000.0), None),
    ("close_code", S("1000"), None),
    ("close_code", B(True), None),
    ("latency_ms", D(12.5), 12.5),
    ("latency_ms", D(-0.0), -0.0),
    ("latency_ms", D(math.inf), math.inf),
    ("latency_ms", D(math.nan), math.nan),
    ("latency_ms", N(12), 12.0),
    ("latency_ms", N(2**63 - 1), float(2**63 - 1)),
    ("latency_ms", S("NaN"), None),
    ("latency_ms", B(False), None),
    ("action_valid", B(True), True),
    ("action_valid", B(False), False),
    ("action_valid", N(1), None),
    ("action_valid", S("true"), None),
    ("action_types", _array(S("start_stream"), S("play")), ["start_stream", "play"]),
    ("action_types", _array(), []),
    ("action_types", _array(S("a"), N(1)), None),
    ("action_types", _array(S("a"), AnyValue(bytes_value=b"a")), None),
    ("action_types", _array(S("a"), AnyValue()), None),
    ("action_types", _array(_array(S("a"))), None),
    ("action_types", S("start_stream"), None),
]
_ATTRIBUTE_OF = {name: attribute for name, attribute, _ in MINIVOICE_FIELDS}


def _same_value(got: Any, expected: Any) -> bool:
    if isinstance(expected, float):  # NaN and -0.0 exactly
        return isinstance(got, float) and struct.pack("<d", got) == struct.pack("<d", expected)
    return type(got) is type(expected) and got == expected


def test_minivoice_conversions_in_both_decoders() -> None:
    """One span per case; every other field of the struct is null, and the struct itself is not."""
    request = ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    for index, (field, value, _) in enumerate(CONVERSIONS):
        span_id = (index + 1).to_bytes(8, "big")
        span = scope_spans.spans.add(trace_id=b"\x01" * 16, span_id=span_id, name=field)
        span.attributes.add(key=_ATTRIBUTE_OF[field], value=value)
        span.attributes.add(key="minivoice.call_id", value=AnyValue(string_value="call_1"))
    body = request.SerializeToString()
    decoders = {"python": request_to_table(request, 1)}
    if fast is not None:
        only_c = fast_request_to_table(body, 1)
        assert only_c is not None
        decoders["c"] = only_c
    for decoder, batch in decoders.items():
        column = batch.table[MINIVOICE_COLUMN]
        assert column.null_count == 0
        for row, (field, value, expected) in zip(column.to_pylist(), CONVERSIONS, strict=True):
            assert _same_value(row[field], expected), (decoder, field, value, row[field])
            assert all(v is None for name, v in row.items() if name != field), (decoder, field)


def test_minivoice_of_a_realistic_batch() -> None:
    """What the collectors send (pipeline.samples) lands in the typed fields."""
    rows = decode_protobuf(sample_request(5, seed=9).SerializeToString(), 1).table.to_pylist()
    by_name = {row["name"]: row[MINIVOICE_COLUMN] for row in rows}
    answer, receiver, webhook = by_name["answer_url"], by_name["stream.receiver"], by_name["webhook"]
    assert answer["http_status_code"] == 200 and isinstance(answer["latency_ms"], float)
    assert answer["action_types"] == ["start_stream"] and answer["action_valid"] is True
    assert answer["track"] == "both" and answer["stream_url"].startswith("wss://")
    assert receiver["close_code"] == 1000 and receiver["closed_by"] == "platform"
    assert receiver["stream_tracks"] == ["inbound", "outbound"] and receiver["media_frames"] > 0
    assert receiver["stop_reason"] == "call_ended"
    assert webhook["event"] == "call.completed" and webhook["created_at_ns"] > 0


@needs_fast
def test_set_minivoice_fields_checks_its_input() -> None:
    try:
        with pytest.raises(ValueError, match="unknown kind"):
            fast.set_minivoice_fields([("a", 9)])
        with pytest.raises(ValueError, match="listed twice"):
            fast.set_minivoice_fields([("a", 0), ("a", 1)])
        with pytest.raises(TypeError):
            fast.set_minivoice_fields(["a"])
        # a failed call keeps the fields it had
        body = sample_request(3, seed=1).SerializeToString()
        only_c = fast_request_to_table(body, 42)
        assert only_c is not None
        assert_tables_equal(only_c.table, _python(body).table)
    finally:
        fast.set_minivoice_fields(otlp.MINIVOICE_KINDS)


# ---- wire format that serialization never produces -------------------------------------------


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _tag(field, 2) + _varint(len(payload)) + payload


def _wrap(span: bytes, resource: bytes = b"", scope: bytes = b"") -> bytes:
    scope_spans = (_ld(1, scope) if scope else b"") + _ld(2, span)
    resource_spans = (_ld(1, resource) if resource else b"") + _ld(2, scope_spans)
    return _ld(1, resource_spans)


def _kv(key: str, value: bytes | None) -> bytes:
    return _ld(1, key.encode()) + (_ld(2, value) if value is not None else b"")


BASE_SPAN = _ld(1, b"\x01" * 16) + _ld(2, b"\x02" * 8) + _ld(5, b"op") + _tag(7, 1) + struct.pack("<Q", 10)

WIRE_CASES = {
    # a oneof set twice: the last one wins (C handles it)
    "oneof string then int": _ld(9, _kv("a", _ld(1, b"x") + _tag(3, 0) + _varint(5))),
    "oneof int then string": _ld(9, _kv("a", _tag(3, 0) + _varint(5) + _ld(1, b"x"))),
    "oneof array, string, array": _ld(
        9, _kv("a", _ld(5, _ld(1, _ld(1, b"x"))) + _ld(1, b"s") + _ld(5, _ld(1, _tag(2, 0) + b"\x01")))
    ),
    # protobuf merges these (Python path)
    "array sent twice (merged)": _ld(
        9, _kv("a", _ld(5, _ld(1, _ld(1, b"x"))) + _ld(5, _ld(1, _ld(1, b"y"))))
    ),
    "kvlist sent twice (merged)": _ld(
        9, _kv("a", _ld(6, _ld(1, _kv("k", _ld(1, b"1")))) + _ld(6, _ld(1, _kv("k", _ld(1, b"2")))))
    ),
    "value sent twice (merged)": _ld(9, _ld(1, b"a") + _ld(2, _ld(1, b"x")) + _ld(2, _tag(3, 0) + b"\x07")),
    "status sent twice (merged)": _ld(15, _tag(3, 0) + b"\x02") + _ld(15, _ld(2, b"why")),
    "repeated key": _ld(9, _kv("a", _ld(1, b"1"))) + _ld(9, _kv("b", None)) + _ld(9, _kv("a", _ld(1, b"2"))),
    "non-string call id": _ld(9, _kv("minivoice.call_id", _tag(3, 0) + _varint(12))),
    "empty call id value": _ld(9, _kv("minivoice.call_id", b"")),
    "call id without value": _ld(9, _kv("minivoice.call_id", None)),
    # known fields with the wrong wire type are unknown fields; unknown fields are skipped
    "name as varint": _tag(5, 0) + _varint(3),
    "attributes as fixed32": _tag(9, 5) + b"\x00\x00\x00\x00",
    "unknown fields": _tag(99, 0) + _varint(1) + _ld(100, b"zz") + _tag(101, 1) + b"\x00" * 8,
    "unknown group": _tag(21, 3) + _tag(1, 0) + b"\x01" + _tag(21, 4),
    "double as varint": _ld(9, _kv("d", _tag(4, 0) + b"\x01")),
    # enums are int32: 64-bit varints truncate
    "kind 2**32+2": _tag(6, 0) + _varint(2**32 + 2),
    "kind -1": _tag(6, 0) + _varint(-1),
    "status code 2**32+2": _ld(15, _tag(3, 0) + _varint(2**32 + 2)),
    "bool 2**40": _ld(9, _kv("b", _tag(2, 0) + _varint(2**40))),
    "int 10-byte varint": _ld(9, _kv("i", _tag(3, 0) + b"\xff" * 9 + b"\x01")),
    "scalars repeated: last wins": _ld(5, b"first") + _ld(5, b"second") + _tag(7, 1) + struct.pack("<Q", 99),
    "event time over int64": _ld(11, _tag(1, 1) + struct.pack("<Q", 2**63) + _ld(2, b"e")),
    "end over int64": _tag(8, 1) + struct.pack("<Q", 2**64 - 1),
    "non-minimal lengths": _tag(9, 2) + b"\x88\x80\x00" + _ld(1, b"k") + _ld(2, _ld(1, b"v")),
    # the typed `minivoice` fields
    "typed bool 2**40": _ld(9, _kv("minivoice.action.valid", _tag(2, 0) + _varint(2**40))),
    "typed string then int": _ld(9, _kv("minivoice.event", _ld(1, b"x") + _tag(3, 0) + _varint(5))),
    "typed int then string": _ld(9, _kv("minivoice.track", _tag(3, 0) + _varint(5) + _ld(1, b"both"))),
    "typed double from int -2**63": _ld(
        9, _kv("minivoice.answer_url.latency_ms", _tag(3, 0) + _varint(2**63))
    ),
    "typed double from int 2**53+1": _ld(
        9, _kv("minivoice.answer_url.latency_ms", _tag(3, 0) + _varint(2**53 + 1))
    ),
    "typed list element int then string": _ld(
        9, _kv("minivoice.action.types", _ld(5, _ld(1, _tag(3, 0) + b"\x01" + _ld(1, b"play"))))
    ),
    "typed list element of wrong wire type": _ld(
        9, _kv("minivoice.action.problems", _ld(5, _tag(1, 0) + b"\x01" + _ld(1, _ld(1, b"no_actions"))))
    ),
    "typed list with a bytes element": _ld(
        9, _kv("minivoice.stream.tracks", _ld(5, _ld(1, _ld(1, b"inbound")) + _ld(1, _ld(7, b"\x00"))))
    ),
    "typed empty list": _ld(9, _kv("minivoice.action.problem_messages", _ld(5, b""))),
    "typed list sent twice (merged)": _ld(
        9, _kv("minivoice.action.types", _ld(5, _ld(1, _ld(1, b"a"))) + _ld(5, _ld(1, _ld(1, b"b"))))
    ),
    "typed key without value": _ld(9, _kv("minivoice.close.code", None)),
    "typed key repeated": _ld(9, _kv("minivoice.close.code", _tag(3, 0) + b"\x01"))
    + _ld(9, _kv("minivoice.close.code", _ld(1, b"1000"))),
}


@needs_fast
@pytest.mark.parametrize("extra", list(WIRE_CASES.values()), ids=list(WIRE_CASES))
def test_wire_format_cases(extra: bytes) -> None:
    body = _wrap(BASE_SPAN + extra)
    parse_protobuf(body)  # upb accepts it
    assert_same(body)


@needs_fast
def test_what_the_c_path_answers_itself() -> None:
    """Cases the C decoder handles without the fallback, with the values upb gives."""
    for name in ("oneof string then int", "oneof array, string, array", "name as varint", "kind 2**32+2"):
        assert fast_request_to_table(_wrap(BASE_SPAN + WIRE_CASES[name]), 1) is not None, name
    for name in ("status sent twice (merged)", "repeated key", "unknown group", "event time over int64"):
        assert fast_request_to_table(_wrap(BASE_SPAN + WIRE_CASES[name]), 1) is None, name
    for name in ("typed list sent twice (merged)", "typed key repeated"):
        assert fast_request_to_table(_wrap(BASE_SPAN + WIRE_CASES[name]), 1) is None, name
    typed = {
        "typed bool 2**40": ("action_valid", True),
        "typed string then int": ("event", None),
        "typed int then string": ("track", "both"),
        "typed double from int -2**63": ("latency_ms", -(2.0**63)),
        "typed double from int 2**53+1": ("latency_ms", float(2**53 + 1)),
        "typed list element int then string": ("action_types", ["play"]),
        "typed list element of wrong wire type": ("action_problems", ["no_actions"]),
        "typed list with a bytes element": ("stream_tracks", None),
        "typed empty list": ("action_problem_messages", []),
        "typed key without value": ("close_code", None),
    }
    for name, (field, value) in typed.items():
        batch = fast_request_to_table(_wrap(BASE_SPAN + WIRE_CASES[name]), 1)
        assert batch is not None, name
        assert batch.table[MINIVOICE_COLUMN].to_pylist()[0][field] == value, name
    row = decode_protobuf(_wrap(BASE_SPAN + WIRE_CASES["oneof string then int"]), 1).table.to_pylist()[0]
    assert row["attributes"] == '{"a":5}'
    row = decode_protobuf(_wrap(BASE_SPAN + WIRE_CASES["kind 2**32+2"]), 1).table.to_pylist()[0]
    assert row["kind"] == "SERVER"


def test_times_over_int64_are_rejected_not_stored() -> None:
    """A uint64 time that int64 cannot hold makes the span unusable (it used to fail the roll-up)."""
    body = _wrap(BASE_SPAN + WIRE_CASES["end over int64"]) + _wrap(BASE_SPAN)
    request = parse_protobuf(body)
    validation = validate_request(request, body)
    assert (validation.accepted, validation.rejected) == (1, 1)
    assert "end_time_unix_nano 18446744073709551615 is over 2**63-1" in validation.message()
    batch = decode_protobuf(body, 1)
    assert (batch.accepted, batch.rejected) == (1, 1)
    assert "end_time_unix_nano" in batch.reasons[0]
    otlp.prune_rejected(request)
    assert validate_request(request).rejected == 0


def test_empty_request() -> None:
    batch = decode_protobuf(b"", 1)
    assert batch.accepted == 0
    assert batch.table.schema == otlp.SPAN_SCHEMA
    if fast is not None:
        assert fast.count_valid(b"") == 0


# ---- fuzz ------------------------------------------------------------------------------------


def _fields(data: bytes) -> list[tuple[int, int, Any]] | None:
    """A message's fields as (number, wire type, value), or None if `data` is not one."""
    fields = []
    position = 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            if position >= len(data) or shift > 63:
                raise ValueError
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    try:
        while position < len(data):
            tag = varint()
            number, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                fields.append((number, 0, varint()))
            elif wire_type in (1, 5):
                size = 8 if wire_type == 1 else 4
                if position + size > len(data):
                    return None
                fields.append((number, wire_type, data[position : position + size]))
                position += size
            elif wire_type == 2:
                size = varint()
                if position + size > len(data):
                    return None
                fields.append((number, 2, data[position : position + size]))
                position += size
            else:
                return None
    except ValueError:
        return None
    return fields


def _encode(fields: list[tuple[int, int, Any]]) -> bytes:
    out = bytearray()
    for number, wire_type, value in fields:
        out += _tag(number, wire_type)
        if wire_type == 0:
            out += _varint(value)
        elif wire_type == 2:
            out += _varint(len(value)) + value
        else:
            out += value
    return bytes(out)


def _mutate_fields(rng: random.Random, data: bytes, depth: int = 0) -> bytes:
    """Structure-aware: duplicate, drop, reorder, retype or re-value fields at any depth."""
    fields = _fields(data)
    if not fields or depth > 8:
        if data and rng.random() < 0.5:  # a string: ASCII keeps it valid UTF-8
            index = rng.randrange(len(data))
            return data[:index] + bytes([rng.choice(b'az"\\\x00\x1f\x7f')]) + data[index + 1 :]
        return data[: rng.randrange(len(data) + 1)]
    index = rng.randrange(len(fields))
    number, wire_type, value = fields[index]
    operation = rng.choices(range(7), weights=[10, 2, 1, 1, 2, 1, 1])[0]
    if operation == 0 and wire_type == 2:
        fields[index] = (number, 2, _mutate_fields(rng, value, depth + 1))
    elif operation == 1:  # the same field again: repeated fields grow, singular ones merge
        fields.insert(rng.randrange(len(fields) + 1), fields[index])
    elif operation == 2:
        del fields[index]
    elif operation == 3:
        fields.append(fields.pop(index))
    elif operation == 4:  # another value of the same wire type
        if wire_type == 0:
            fields[index] = (number, 0, rng.choice([0, 1, 2, 5, 2**31, 2**32 + 1, 2**63, 2**64 - 1]))
        elif wire_type in (1, 5):
            fields[index] = (number, wire_type, rng.randbytes(len(value)))
        else:
            fields[index] = (number, 2, value[: rng.randrange(len(value) + 1)])
    elif operation == 5:  # an unknown field
        kind = rng.choice([0, 1, 2, 5])
        payload = {0: rng.randrange(2**64), 1: rng.randbytes(8), 2: rng.randbytes(3), 5: rng.randbytes(4)}
        fields.insert(rng.randrange(len(fields) + 1), (rng.randrange(16, 300), kind, payload[kind]))
    else:  # a known field with another wire type: protobuf makes it an unknown field
        fields[index] = (number, 0, 7) if wire_type != 0 else (number, 2, b"x")
    return _encode(fields)


def _mutate(rng: random.Random, body: bytes) -> bytes:
    if rng.random() < 0.85:
        for _ in range(rng.randint(1, 3)):
            body = _mutate_fields(rng, body)
        return body
    data = bytearray(body)  # raw bytes: mostly rejected by upb, sometimes not
    if not data:
        return body
    position = rng.randrange(len(data))
    if rng.random() < 0.5:
        data[position] ^= 1 << rng.randrange(8)
    else:
        del data[position : position + rng.randint(1, 8)]
    return bytes(data)


@needs_fast
def test_fuzz_mutated_requests_never_crash_and_match_python() -> None:
    rng = random.Random(20240501)
    seeds = [sample_request(6, seed=seed).SerializeToString() for seed in range(4)]
    odd = ExportTraceServiceRequest()
    odd.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="x"
    ).attributes.add(key="k", value=AnyValue(double_value=0.5))
    seeds.append(odd.SerializeToString())
    seeds.append(_wrap(BASE_SPAN + b"".join(WIRE_CASES.values())))
    accepted = by_c = 0
    for _ in range(4000):
        body = _mutate(rng, rng.choice(seeds))
        try:
            parse_protobuf(body)
        except OTLPDecodeError:
            continue
        accepted += 1
        by_c += assert_same(body) is not None
    # most mutations keep the request parseable, and the C path answers many of them itself
    assert accepted > 2000
    assert by_c > 800


@needs_fast
def test_walker_is_safe_on_bytes_upb_rejects() -> None:
    """Not its contract, but it must not crash or read out of bounds (it bails out instead)."""
    rng = random.Random(7)
    body = sample_request(5, seed=1).SerializeToString()
    for _ in range(3000):
        garbage = _mutate(rng, body) if rng.random() < 0.7 else rng.randbytes(rng.randrange(64))
        result = fast.walk(garbage)
        assert result is None or isinstance(result, tuple)
        several = fast.walk_records([(body, 1), (garbage, 2)])
        assert several is None or isinstance(several, tuple)
        count = fast.count_valid(garbage)
        assert count is None or count >= 0
        # a WAL record is trusted to be parsed before; garbage still never crashes it
        with contextlib.suppress(OTLPDecodeError):
            decode_protobuf(garbage, 1, parsed_before=True)
    with pytest.raises(TypeError):
        fast.walk("not bytes")


@needs_fast
def test_parsed_before_skips_the_second_parse_but_not_the_utf8_check(caplog: Any) -> None:
    """Roll-up decodes WAL records without re-parsing; a string upb would refuse still never lands."""
    body = sample_request(20, seed=4).SerializeToString()
    assert decode_protobuf(body, 42, parsed_before=True).table.equals(_python(body).table)
    bad = _wrap(BASE_SPAN + _ld(5, b"\xff\xfe"))  # a span name that is not UTF-8
    with pytest.raises(OTLPDecodeError, match="UTF-8"):
        parse_protobuf(bad)
    with pytest.raises(OTLPDecodeError, match="UTF-8"):
        decode_protobuf(bad, 3, parsed_before=True)
    assert "C decoder output rejected" in caplog.text


# ---- floats ----------------------------------------------------------------------------------


@needs_fast
def test_doubles_are_written_as_orjson_writes_them() -> None:
    rng = random.Random(3)
    values = [
        *(struct.unpack("<d", rng.randbytes(8))[0] for _ in range(30000)),
        *(rng.uniform(-1e6, 1e6) for _ in range(5000)),
        *(float(rng.randrange(-(10**18), 10**18)) for _ in range(5000)),
        *(10.0**e for e in range(-330, 309)),
        *(1.5 * 2.0**e for e in range(-1074, 1024, 7)),
        0.0, -0.0, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308,
    ]  # fmt: skip
    for value in values:
        if math.isfinite(value):
            assert fast.json_double(value) == orjson.dumps(value), repr(value)
    assert fast.json_double(math.nan) == b'"NaN"'
    assert fast.json_double(-math.inf) == b'"-Infinity"'


@needs_fast
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_double_is_written_as_orjson_writes_it(value: float) -> None:
    assert fast.json_double(value) == orjson.dumps(value)


def test_fallback_without_the_extension(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    """With the extension missing, decoding still works (Python path) and says so once."""
    monkeypatch.setattr(otlp, "_otlp_fast", None)
    monkeypatch.setattr(otlp, "_warned_slow", False)
    body = sample_request(10, seed=2).SerializeToString()
    with caplog.at_level("WARNING", logger="pipeline.otlp"):
        first = decode_protobuf(body, 5)
        decode_protobuf(body, 5)
    assert first.accepted == 10
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "pipeline._otlp_fast is not built" in caplog.records[0].message
    assert fast_request_to_table(body, 5) is None
    assert validate_request(parse_protobuf(body), body).accepted == 10
    assert isinstance(first.table, pa.Table)
