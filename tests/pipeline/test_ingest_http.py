"""OTLP/HTTP behaviour of ingest: JSON vectors from the spec, and the bad-input matrix."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from pipeline.ingest import RunningIngest, running_ingest
from pipeline.samples import sample_request
from pipeline.storage import DataDir

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON_TYPE = {"content-type": "application/json"}
TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LIMIT = 256 * 1024

# Written by hand from the OTLP specification's JSON encoding: hex ids (upper case allowed), int64
# as strings and as numbers, enums as integers, lowerCamelCase names, an unknown field.
SPEC_VECTOR = {
    "resourceSpans": [
        {
            "resource": {
                "attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}],
                "futureField": {"x": 1},
            },
            "scopeSpans": [
                {
                    "scope": {"name": "my.library", "version": "1.0.0"},
                    "spans": [
                        {
                            "traceId": "5B8EFFF798038103D269B633813FC60C",
                            "spanId": "EEE19B7EC3C1B174",
                            "parentSpanId": "EEE19B7EC3C1B173",
                            "name": "I'm a server span",
                            "startTimeUnixNano": "1544712660000000000",
                            "endTimeUnixNano": 1544712661000000000,
                            "kind": 2,
                            "attributes": [
                                {"key": "minivoice.call_id", "value": {"stringValue": "call_json"}},
                                {"key": "big", "value": {"intValue": "9007199254740993"}},
                                {"key": "small", "value": {"intValue": 7}},
                                {"key": "ratio", "value": {"doubleValue": 0.25}},
                                {"key": "ok", "value": {"boolValue": True}},
                                {
                                    "key": "tracks",
                                    "value": {"arrayValue": {"values": [{"stringValue": "inbound"}]}},
                                },
                                {
                                    "key": "nested",
                                    "value": {
                                        "kvlistValue": {"values": [{"key": "a", "value": {"intValue": "1"}}]}
                                    },
                                },
                                {"key": "blob", "value": {"bytesValue": "aGVsbG8="}},
                            ],
                            "events": [
                                {
                                    "timeUnixNano": "1544712660500000000",
                                    "name": "stop",
                                    "attributes": [
                                        {
                                            "key": "minivoice.stop.reason",
                                            "value": {"stringValue": "call_ended"},
                                        }
                                    ],
                                }
                            ],
                            "links": [
                                {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708"}
                            ],
                            "status": {"code": 2, "message": "boom"},
                            "someNewField": "ignored",
                        }
                    ],
                }
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIngest]:
    data = tmp_path_factory.mktemp("ingest")
    with running_ingest(data, token=TOKEN, max_body_bytes=LIMIT, wal_file_age_s=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as session:
        yield session


def _post(client: httpx.Client, ingest: RunningIngest, body: bytes, **headers: str) -> httpx.Response:
    headers = {key.replace("_", "-"): value for key, value in headers.items()}
    return client.post(ingest.traces_url, content=body, headers={**AUTH, **headers})


def _stored(ingest: RunningIngest, where: str) -> list[dict]:
    # Wait for the roll-up (WAL -> segment) by polling the rows.
    import time

    deadline = time.monotonic() + 20
    while True:
        with DataDir(ingest.data.path).connect_readonly() as con:
            rows = con.sql(f"select * from spans where {where}").to_arrow_table().to_pylist()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_json_spec_vector_is_stored_with_types(ingest: RunningIngest, client: httpx.Client) -> None:
    response = _post(client, ingest, json.dumps(SPEC_VECTOR).encode(), **JSON_TYPE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    [row] = _stored(ingest, "call_id = 'call_json'")
    assert row["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert row["span_id"] == "eee19b7ec3c1b174"
    assert row["parent_span_id"] == "eee19b7ec3c1b173"
    assert (row["start_ns"], row["end_ns"]) == (1544712660000000000, 1544712661000000000)
    assert (row["kind"], row["status_code"], row["status_message"]) == ("SERVER", "ERROR", "boom")
    assert row["service_name"] == "json-svc"
    assert json.loads(row["attributes"]) == {
        "minivoice.call_id": "call_json",
        "big": 9007199254740993,
        "small": 7,
        "ratio": 0.25,
        "ok": True,
        "tracks": ["inbound"],
        "nested": {"a": 1},
        "blob": "aGVsbG8=",
    }
    assert row["events"] == [
        {
            "time_ns": 1544712660500000000,
            "name": "stop",
            "attributes": '{"minivoice.stop.reason":"call_ended"}',
        }
    ]
    assert json.loads(row["links"]) == [
        {"trace_id": "0102030405060708090a0b0c0d0e0f10", "span_id": "0102030405060708", "attributes": {}}
    ]


def test_gzip_json_and_partial_success(ingest: RunningIngest, client: httpx.Client) -> None:
    document = json.loads(json.dumps(SPEC_VECTOR))
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    good = dict(spans[0], spanId="00000000000000a1", attributes=[])
    short = dict(spans[0], spanId="a1b2", name="short id")
    zero = dict(spans[0], traceId="0" * 32, name="zero trace")
    document["resourceSpans"][0]["scopeSpans"][0]["spans"] = [good, short, zero]
    response = _post(
        client, ingest, gzip.compress(json.dumps(document).encode()), content_encoding="gzip", **JSON_TYPE
    )
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "span_id has 2 bytes, expected 8" in partial["errorMessage"]
    assert "trace_id is all zeros" in partial["errorMessage"]
    assert len(_stored(ingest, "span_id = '00000000000000a1'")) == 1


def test_json_times_over_int64_are_rejected_as_partial_success(
    ingest: RunningIngest, client: httpx.Client
) -> None:
    """As in the protobuf path: such a span is refused in the response, not acknowledged then lost."""
    document = json.loads(json.dumps(SPEC_VECTOR))
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    template = dict(spans[0], attributes=[{"key": "minivoice.call_id", "value": {"stringValue": "call_t"}}])
    late_start = dict(
        template, spanId="00000000000000b2", name="late", startTimeUnixNano="9223372036854775808"
    )
    late_end = dict(template, spanId="00000000000000b3", name="end", endTimeUnixNano=18446744073709551615)
    late_event = dict(
        template,
        spanId="00000000000000b4",
        name="event",
        events=[{"timeUnixNano": "1544712660500000000"}, {"timeUnixNano": "9223372036854775808"}],
    )
    edge = dict(template, spanId="00000000000000b5", name="edge", endTimeUnixNano=str(2**63 - 1))
    good = dict(template, spanId="00000000000000b1", name="good")
    document["resourceSpans"][0]["scopeSpans"][0]["spans"] = [good, late_start, late_end, late_event, edge]
    response = _post(client, ingest, json.dumps(document).encode(), **JSON_TYPE)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "3"
    message = partial["errorMessage"]
    assert "spans[1] (name 'late'): start_time_unix_nano 9223372036854775808 is over 2**63-1" in message
    assert "spans[2] (name 'end'): end_time_unix_nano 18446744073709551615 is over 2**63-1" in message
    assert "spans[3] (name 'event'): events[1].time_unix_nano 9223372036854775808 is over 2**63-1" in message
    rows = _stored(ingest, "call_id = 'call_t'")  # one request: one WAL record, rolled up at once
    stored = sorted((row["name"], row["end_ns"]) for row in rows)
    assert stored == [("edge", 2**63 - 1), ("good", 1544712661000000000)]


def test_protobuf_partial_success(ingest: RunningIngest, client: httpx.Client) -> None:
    request = sample_request(3, seed=77)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[1].span_id = b"\x01\x02\x03"
    response = _post(client, ingest, request.SerializeToString(), **PROTOBUF)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 1
    assert "span_id has 3 bytes, expected 8" in parsed.partial_success.error_message
    assert len(_stored(ingest, "call_id = 'call_77_0'")) == 2


def _bomb() -> bytes:
    # 64 MiB of zeros compresses to ~64 KiB: far over the 256 KiB limit once inflated.
    compressor = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    return compressor


BAD_INPUTS = [
    ("garbage", b"\xff\xfe\xfd garbage \x00\x01", PROTOBUF, 400, "not a valid protobuf"),
    ("truncated protobuf", sample_request(5).SerializeToString()[:-7], PROTOBUF, 400, "not a valid protobuf"),
    ("invalid json", b'{"resourceSpans": [', JSON_TYPE, 400, "not valid JSON"),
    ("json not an object", b"[1, 2]", JSON_TYPE, 400, "is an object"),
    (
        "json base64 id",
        json.dumps(
            {
                "resourceSpans": [
                    {"scopeSpans": [{"spans": [{"traceId": "W47/95gDgQPSabYzgT/GDA==", "spanId": "x"}]}]}
                ]
            }
        ).encode(),
        JSON_TYPE,
        400,
        "must be a hex string",
    ),
    (
        "json wrong type",
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5, "traceId": "'
        + b"ab" * 16
        + b'", "spanId": "'
        + b"cd" * 8
        + b'"}]}]}]}',
        JSON_TYPE,
        400,
        "OTLP JSON",
    ),
    ("wrong content type", b"{}", {"content-type": "text/plain"}, 415, "not supported"),
    ("no content type", b"{}", {}, 415, "not supported"),
    ("unsupported encoding", b"{}", {**JSON_TYPE, "content-encoding": "br"}, 415, "Content-Encoding"),
    ("bad gzip", b"\x1f\x8b\x08\x00garbage", {**PROTOBUF, "content-encoding": "gzip"}, 400, "gzip"),
    (
        "truncated gzip",
        gzip.compress(b"x" * 1000)[:20],
        {**PROTOBUF, "content-encoding": "gzip"},
        400,
        "gzip",
    ),
    ("oversize", b"\0" * (LIMIT + 1), PROTOBUF, 413, "larger than the limit"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_status_and_message(
    ingest: RunningIngest, client: httpx.Client, case: tuple[str, bytes, dict[str, str], int, str]
) -> None:
    _name, body, headers, status, message = case
    response = _post(client, ingest, body, **headers)
    assert response.status_code == status, response.text
    if response.headers["content-type"] == "application/x-protobuf":
        text = status_pb2.Status.FromString(response.content).message
    else:
        text = response.json()["message"]
    assert message in text
    assert client.get(ingest.url + "/healthz").status_code == 200  # still up


def test_gzip_bomb_is_stopped_while_inflating(ingest: RunningIngest, client: httpx.Client) -> None:
    bomb = _bomb()
    assert len(bomb) < LIMIT
    response = _post(client, ingest, bomb, content_encoding="gzip", **PROTOBUF)
    assert response.status_code == 413
    assert (
        "decompressed body is larger than the limit" in status_pb2.Status.FromString(response.content).message
    )
    assert ingest.service.inflight_bytes == 0


def test_missing_or_wrong_token_is_401(ingest: RunningIngest, client: httpx.Client) -> None:
    body = sample_request(2).SerializeToString()
    missing = client.post(ingest.traces_url, content=body, headers=PROTOBUF)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "bearer token missing" in status_pb2.Status.FromString(missing.content).message
    wrong = client.post(ingest.traces_url, content=body, headers={**PROTOBUF, "authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_wrong_method_and_path(ingest: RunningIngest, client: httpx.Client) -> None:
    assert client.get(ingest.traces_url, headers=AUTH).status_code == 405
    assert client.post(ingest.url + "/v1/metrics", headers=AUTH).status_code == 404


def test_data_accepted_earlier_survives_the_bad_inputs(ingest: RunningIngest, client: httpx.Client) -> None:
    before = _post(client, ingest, sample_request(10, seed=5).SerializeToString(), **PROTOBUF)
    assert before.status_code == 200
    for _name, body, headers, _status, _message in BAD_INPUTS:
        _post(client, ingest, body, **headers)
    rows = _stored(ingest, "call_id like 'call_5_%'")
    assert len(rows) == 10
    health = client.get(ingest.url + "/healthz").json()
    assert health["roll_failures"] == 0


def test_saturated_write_path_answers_503_with_retry_after(tmp_path: Path) -> None:
    body = sample_request(50).SerializeToString()
    # A backlog limit below one request: the second request finds the log ahead of the segments.
    with running_ingest(tmp_path, max_backlog_bytes=1, wal_file_age_s=60) as ingest, httpx.Client() as client:
        first = client.post(ingest.traces_url, content=body, headers=PROTOBUF)
        assert first.status_code == 200
        second = client.post(ingest.traces_url, content=body, headers=PROTOBUF)
        assert second.status_code == 503
        assert second.headers["retry-after"] == "1"
        assert "retry later" in status_pb2.Status.FromString(second.content).message
    with DataDir(tmp_path).connect_readonly() as con:
        assert con.execute("select count(*) from spans").fetchone() == (50,)


def test_too_much_in_flight_answers_429(tmp_path: Path) -> None:
    body = sample_request(50).SerializeToString()
    with running_ingest(tmp_path, max_inflight_bytes=1024) as ingest, httpx.Client() as client:
        response = client.post(ingest.traces_url, content=body, headers=PROTOBUF)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert ingest.service.inflight_bytes == 0
