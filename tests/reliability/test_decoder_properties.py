"""Hypothesis against the OTLP decoders, end to end through the write path: what ingest accepts,
the roll-up must be able to store.

Ingest answers 200 once a request is in the write-ahead log, and decodes it into rows only later
(`pipeline.rollup`). A span that ingest's validation accepts but the roll-up cannot decode would be
acknowledged and then dropped, and an exception there would keep the whole WAL file, with every
other acknowledged span in it, out of the segments. So, for any request:

- `parse_protobuf`/`validate_request` and `parse_json` either accept or raise `OTLPDecodeError`
  (a 400 with its message), never anything else;
- every accepted span decodes (`decode_protobuf(..., parsed_before=True)`, as the roll-up does it)
  into exactly one row, none rejected, and the rows write to Parquet with the stored schema.

The parsers of the collectors (actions, webhooks, media frames) already have never-raise
properties (tests/collectors); here they get hostile sizes: memory stays bounded by the input.
"""

from __future__ import annotations

import contextlib
import io
import json
import tracemalloc
from typing import Any

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collectors.actions import validate_actions
from collectors.media import StreamStats
from collectors.webhooks import parse_webhook
from pipeline.otlp import OTLPDecodeError, decode_protobuf, parse_protobuf, prune_rejected, validate_request
from pipeline.otlp_json import parse_json
from pipeline.schema import SPAN_SCHEMA
from tests.pipeline.test_otlp_fast import requests

FUZZ = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rolls_up(payload: bytes, accepted: int) -> None:
    """What the roll-up does with a logged payload: every accepted span becomes one stored row."""
    batch = decode_protobuf(payload, 1_700_000_000_000_000_000, parsed_before=True)
    assert (batch.accepted, batch.rejected) == (accepted, 0), batch.reasons
    table = batch.table
    if table.schema != SPAN_SCHEMA:
        table = table.select(SPAN_SCHEMA.names).cast(SPAN_SCHEMA)
    pq.write_table(table, io.BytesIO())


def _ingest_protobuf(body: bytes) -> None:
    """Ingest's own steps for a protobuf body (pipeline.ingest.IngestApp._decode)."""
    try:
        request = parse_protobuf(body)
    except OTLPDecodeError:
        return
    validation = validate_request(request, body)
    payload = body
    if validation.rejected:
        prune_rejected(request)
        payload = request.SerializeToString()
    if validation.accepted:
        _rolls_up(payload, validation.accepted)


@FUZZ
@given(requests())
def test_accepted_protobuf_spans_always_roll_up(request: ExportTraceServiceRequest) -> None:
    _ingest_protobuf(request.SerializeToString())


@FUZZ
@given(requests(plain=True), st.data())
def test_damaged_protobuf_is_refused_or_rolls_up(
    request: ExportTraceServiceRequest, data: st.DataObject
) -> None:
    body = bytearray(request.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        if body:
            index = data.draw(st.integers(0, len(body) - 1))
            body[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]
    _ingest_protobuf(bytes(body))


# ---- OTLP JSON -----------------------------------------------------------------------------

HEX = "0123456789abcdefABCDEF"


def _id(size: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.binary(min_size=size, max_size=size).map(bytes.hex),  # well formed (maybe all zeros)
        st.text(HEX, max_size=size * 2 + 3),  # wrong lengths, odd digit counts
        st.sampled_from(["", "W47/95gDgQPSabYzgT/GDA==", "zz"]),  # empty, base64, not hex
        st.integers(),
        st.none(),
    )


INT64_TEXT = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "1e3", "0x10", " 5", "-0", "18446744073709551616"]),
    st.floats(allow_nan=False),
)
SCALARS = st.one_of(
    st.fixed_dictionaries({"stringValue": st.one_of(st.text(max_size=8), st.integers())}),
    st.fixed_dictionaries({"intValue": INT64_TEXT}),
    st.fixed_dictionaries(
        {"doubleValue": st.one_of(st.floats(allow_nan=False), st.sampled_from(["NaN", "x"]))}
    ),
    st.fixed_dictionaries({"boolValue": st.one_of(st.booleans(), st.integers(0, 2), st.just("true"))}),
    st.fixed_dictionaries({"bytesValue": st.sampled_from(["", "AAE=", "not base64", 5])}),
    st.just({}),
    st.just({"stringValue": "a", "intValue": 1}),  # two members of a oneof
)
ANY_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.fixed_dictionaries({"arrayValue": st.fixed_dictionaries({"values": st.lists(inner, max_size=3)})}),
        st.fixed_dictionaries(
            {
                "kvlistValue": st.fixed_dictionaries(
                    {"values": st.lists(st.fixed_dictionaries({"key": st.text(max_size=5), "value": inner}))}
                )
            }
        ),
    ),
    max_leaves=8,
)
ATTRIBUTES = st.lists(
    st.fixed_dictionaries(
        {"key": st.one_of(st.sampled_from(["minivoice.call_id", "service.name", "a"]), st.text(max_size=6))},
        optional={"value": ANY_VALUES},
    ),
    max_size=4,
)
SPANS = st.fixed_dictionaries(
    {"traceId": _id(16), "spanId": _id(8)},
    optional={
        "parentSpanId": _id(8),
        "name": st.one_of(st.text(max_size=10), st.integers()),
        "kind": st.one_of(st.integers(-3, 9), st.sampled_from(["SPAN_KIND_SERVER", "SERVER", ""])),
        "startTimeUnixNano": INT64_TEXT,
        "endTimeUnixNano": INT64_TEXT,
        "attributes": ATTRIBUTES,
        "events": st.lists(
            st.fixed_dictionaries(
                {},
                optional={"timeUnixNano": INT64_TEXT, "name": st.text(max_size=5), "attributes": ATTRIBUTES},
            ),
            max_size=2,
        ),
        "links": st.lists(
            st.fixed_dictionaries(
                {}, optional={"traceId": _id(16), "spanId": _id(8), "attributes": ATTRIBUTES}
            ),
            max_size=2,
        ),
        "status": st.fixed_dictionaries(
            {},
            optional={
                "code": st.one_of(st.integers(-1, 5), st.just("STATUS_CODE_ERROR")),
                "message": st.text(),
            },
        ),
        "droppedAttributesCount": st.integers(-1, 2**33),
        "unknownField": st.just({"ignored": True}),
    },
)
DOCUMENTS = st.fixed_dictionaries(
    {
        "resourceSpans": st.lists(
            st.fixed_dictionaries(
                {
                    "scopeSpans": st.lists(
                        st.fixed_dictionaries({"spans": st.lists(SPANS, max_size=3)}), max_size=2
                    )
                },
                optional={"resource": st.fixed_dictionaries({"attributes": ATTRIBUTES})},
            ),
            max_size=2,
        )
    }
)


@FUZZ
@given(DOCUMENTS)
def test_accepted_json_spans_always_roll_up(document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    try:
        request, validation = parse_json(body)
    except OTLPDecodeError:
        return
    if validation.accepted:
        # Ingest logs JSON requests as their protobuf encoding (pipeline.ingest.IngestApp._decode).
        _rolls_up(request.SerializeToString(), validation.accepted)


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c),
    )
)
def test_any_json_value_is_refused_or_accepted(value: Any) -> None:
    with contextlib.suppress(OTLPDecodeError):
        parse_json(json.dumps(value).encode())


# ---- bounded memory on hostile sizes ------------------------------------------------------------


def _peak_bytes(work: Any) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


NESTED = b"[" * 200_000 + b"]" * 200_000  # 400 KB, deeper than any JSON parser recurses


def test_parsers_refuse_deep_nesting_with_memory_bounded_by_the_input() -> None:
    text = NESTED.decode()
    cases = {
        "parse_json": lambda: _refused(lambda: parse_json(NESTED)),
        "parse_protobuf": lambda: _refused(lambda: parse_protobuf(b"\x0a\x02" * 100_000)),
        "validate_actions": lambda: validate_actions(NESTED),
        "parse_webhook": lambda: parse_webhook(NESTED),
        "StreamStats.observe": lambda: StreamStats().observe(text),
    }
    for name, work in cases.items():
        peak = _peak_bytes(work)
        assert peak < 20 * len(NESTED), f"{name} used {peak} bytes on a {len(NESTED)} byte input"
    assert [p.code for p in validate_actions(NESTED)] == ["not_json"]
    problem = parse_webhook(NESTED)
    assert getattr(problem, "code", None) == "not_json"
    stats = StreamStats()
    stats.observe(text)
    assert stats.error_types == {"frame_too_large": 1}


def _refused(work: Any) -> None:
    try:
        work()
    except OTLPDecodeError:
        return
    raise AssertionError("expected OTLPDecodeError")


def test_a_16_mb_media_frame_is_counted_not_parsed() -> None:
    frame = '{"event": "media", "media": {"payload": "' + "A" * (16 * 1024 * 1024) + '"}}'
    stats = StreamStats()
    peak = _peak_bytes(lambda: stats.observe(frame))
    assert peak < 64 * 1024  # neither parsed nor copied
    assert stats.error_types == {"frame_too_large": 1}
    assert stats.frames == 0
