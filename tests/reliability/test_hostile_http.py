"""Hostile requests against every HTTP endpoint callscope runs or embeds, on real servers.

- ingest (OTLP/HTTP): deeply nested JSON (whole body, and attribute values nested past the
  parsers' limits, in JSON and protobuf), oversized bodies, 10 000 distinct call ids in one
  request (all stored, one call each after the build), and a 1 GB gzip bomb streamed to a
  `callscope ingest` process whose peak RSS is read from /proc before and after;
- the webhook collector: deeply nested and oversized bodies, a webhook without a call id (400,
  and its error span is counted by the pipeline as unattributed, not dropped);
- the answer_url middleware: a deeply nested request body and a deeply nested response.

Every refusal has the right status and a message that says what is wrong; the server stays up
and what it accepted before stays stored.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collectors import AnswerUrlMiddleware, WebhookCollector, call_root_span_id, call_trace_id
from pipeline import timeline
from pipeline.ingest import RunningIngest, running_ingest
from pipeline.samples import sample_request
from pipeline.settings import Settings
from pipeline.storage import DataDir
from tests.conftest import TEST_RESOURCE
from tests.ingest_process import ingest_process
from tests.otlp_sink import UvicornThread

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}
LIMIT = 1024 * 1024
DEEP = 100_000


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIngest]:
    with running_ingest(
        tmp_path_factory.mktemp("hostile") / "data", fsync=False, max_body_bytes=LIMIT, wal_file_age_s=0.2
    ) as running:
        yield running


def _message(response: httpx.Response) -> str:
    if response.headers["content-type"] == "application/x-protobuf":
        return status_pb2.Status.FromString(response.content).message
    return str(response.json()["message"])


def _json_request(depth: int) -> bytes:
    """An OTLP JSON request whose one span has an attribute value nested `depth` kvlists deep."""
    # Built as text: json.dumps itself recurses, and stops at Python's recursion limit.
    value = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth + '{"stringValue": "leaf"}'
    value += "}]}}" * depth
    span = (
        f'{{"traceId": "{"ab" * 16}", "spanId": "{"cd" * 8}", "name": "deep", '
        f'"attributes": [{{"key": "a", "value": {value}}}]}}'
    )
    return f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}]}}]}}]}}'.encode()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _protobuf_nested(depth: int) -> bytes:
    """An ExportTraceServiceRequest whose one span has an attribute nested `depth` kvlists deep.

    Written as wire bytes: the protobuf runtime refuses to build a message this deep."""
    value = _field(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        key_value = _field(1, b"k") + _field(2, value)  # KeyValue.key, .value
        value = _field(6, _field(1, key_value))  # AnyValue.kvlist_value.values
    span = (
        _field(1, b"\x01" * 16)
        + _field(2, b"\x02" * 8)
        + _field(5, b"deep")
        + _field(9, _field(1, b"a") + _field(2, value))
    )
    return _field(1, _field(2, _field(2, span)))  # resource_spans.scope_spans.spans


INGEST_CASES = [
    ("nested arrays", b'{"resourceSpans": ' + b"[" * DEEP + b"]" * DEEP + b"}", JSON, 400, "not valid JSON"),
    ("attribute nested 2000 deep, JSON", _json_request(2000), JSON, 400, "not valid JSON"),
    ("attribute nested 40 deep, JSON", _json_request(40), JSON, 400, "Message too deep"),
    ("attribute nested 200 deep, protobuf", _protobuf_nested(200), PROTOBUF, 400, "not a valid protobuf"),
    ("oversized JSON", b"[" + b" " * LIMIT + b"]", JSON, 413, "larger than the limit"),
    ("oversized protobuf", b"\x0a" * (LIMIT + 1), PROTOBUF, 413, "larger than the limit"),
]


@pytest.mark.parametrize("case", INGEST_CASES, ids=[c[0] for c in INGEST_CASES])
def test_ingest_refuses_nested_and_oversized_bodies(
    ingest: RunningIngest, case: tuple[str, bytes, dict[str, str], int, str]
) -> None:
    _name, body, headers, status, message = case
    with httpx.Client(timeout=30) as client:
        before = client.post(
            ingest.traces_url, content=sample_request(5, seed=91).SerializeToString(), headers=PROTOBUF
        )
        assert before.status_code == 200
        response = client.post(ingest.traces_url, content=body, headers=headers)
        assert response.status_code == status, response.text[:300]
        assert message in _message(response)
        assert client.get(ingest.url + "/healthz").status_code == 200
    assert ingest.service.inflight_bytes == 0


def test_nesting_within_the_parsers_limits_is_stored(ingest: RunningIngest) -> None:
    # 30 kvlists deep (each is three message levels; protobuf's limit is 100): accepted in both
    # encodings, and stored as JSON text that DuckDB reads back.
    with httpx.Client(timeout=30) as client:
        as_json = client.post(ingest.traces_url, content=_json_request(30), headers=JSON)
        as_protobuf = client.post(ingest.traces_url, content=_protobuf_nested(30), headers=PROTOBUF)
    assert (as_json.status_code, as_protobuf.status_code) == (200, 200)
    _wait_rolled(ingest)
    with ingest.data.connect_readonly() as con:
        rows = con.execute(
            "SELECT json_extract_string(attributes, '$.a') FROM spans WHERE name = 'deep'"
        ).fetchall()
    assert len(rows) == 2 and all('"leaf"' in str(row[0]) for row in rows), rows


def _wait_rolled(ingest: RunningIngest, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while ingest.service.backlog_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the active WAL file seals after wal_file_age_s
    while ingest.service.backlog_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_ten_thousand_call_ids_in_one_request(tmp_path: Path) -> None:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for index in range(10_000):
        call_id = f"call_{index:05d}"
        span = spans.add(
            trace_id=call_trace_id(call_id).to_bytes(16, "big"),
            span_id=(index + 1).to_bytes(8, "big"),
            parent_span_id=call_root_span_id(call_id).to_bytes(8, "big"),
            name="webhook",
            start_time_unix_nano=1_790_000_000_000_000_000 + index,
            end_time_unix_nano=1_790_000_000_001_000_000 + index,
        )
        span.attributes.append(KeyValue(key="minivoice.call_id", value=AnyValue(string_value=call_id)))
        span.attributes.append(KeyValue(key="minivoice.event", value=AnyValue(string_value="call.initiated")))
    body = request.SerializeToString()
    data = tmp_path / "data"
    with running_ingest(data, fsync=False) as ingest, httpx.Client(timeout=60) as client:
        response = client.post(
            ingest.traces_url, content=gzip.compress(body), headers={**PROTOBUF, "content-encoding": "gzip"}
        )
        assert response.status_code == 200
    with DataDir(data).connect_readonly() as con:
        assert con.execute("SELECT count(*), count(DISTINCT call_id) FROM spans").fetchone() == (
            10_000,
            10_000,
        )
    summary = timeline.build(Settings(data_dir=data))
    assert summary.lines()
    with DataDir(data).connect_readonly() as con:
        assert con.execute("SELECT count(*), count(DISTINCT call_id) FROM calls").fetchone() == (
            10_000,
            10_000,
        )


# ---- 1 GB gzip bomb against a real ingest process -------------------------------------------------


def _gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """`inflated` bytes of zeros, gzip-compressed (about 1 MB for 1 GiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated // len(chunk))]
    parts.append(compressor.flush())
    return b"".join(parts)


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_a_1_gb_gzip_bomb_is_stopped_while_streaming(tmp_path: Path) -> None:
    bomb = _gzip_bomb()
    assert len(bomb) < 2 * 1024 * 1024
    with ingest_process(tmp_path / "data", "--roll-processes", "0") as (process, url):
        with httpx.Client(timeout=60) as client:
            warm = client.post(url, content=sample_request(50).SerializeToString(), headers=PROTOBUF)
            assert warm.status_code == 200
            before = _peak_rss_kb(process.pid)
            # Streamed in 64 KiB chunks without a Content-Length: ingest must inflate as it reads.
            chunks = (bomb[i : i + 65536] for i in range(0, len(bomb), 65536))
            try:
                response = client.post(url, content=chunks, headers={**PROTOBUF, "content-encoding": "gzip"})
            except httpx.TransportError:
                response = None  # refused before we finished sending: acceptable, checked below
            after = _peak_rss_kb(process.pid)
            assert client.get(url.removesuffix("/v1/traces") + "/healthz").json()["errors"] == {"413": 1}
        if response is not None:
            assert response.status_code == 413
            assert "decompressed body is larger than the limit" in _message(response)
        # 1 GiB inflated, at most the 16 MiB body limit (plus buffers) held at once.
        assert after - before < 64 * 1024, f"peak RSS grew {(after - before) // 1024} MB"


# ---- the webhook collector ------------------------------------------------------------------------


@pytest.fixture
def webhooks(memory_provider: TracerProvider) -> Iterator[str]:
    collector = WebhookCollector(tracer_provider=memory_provider, max_body_bytes=LIMIT)
    try:
        with UvicornThread(collector) as server:
            yield server.url + "/"
    finally:
        collector.close()


def test_webhook_collector_refuses_nested_and_oversized_bodies(
    webhooks: str, memory_exporter: InMemorySpanExporter
) -> None:
    nested = b'{"event": "call.completed", "call": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    with httpx.Client(timeout=30) as client:
        deep = client.post(webhooks, content=nested, headers=JSON)
        declared = client.post(webhooks, content=b" " * (LIMIT + 1), headers=JSON)
        streamed = client.post(webhooks, content=iter([b" " * 65536] * 20), headers=JSON)
        no_call_id = client.post(webhooks, json={"event": "call.completed", "call": {"status": "completed"}})
        fine = client.post(webhooks, json={"event": "call.completed", "call": {"id": "call_ok"}})
    assert (deep.status_code, deep.json()["error"]) == (400, "not_json")
    assert (declared.status_code, declared.json()["error"]) == (413, "too_large")
    assert (streamed.status_code, streamed.json()["error"]) == (413, "too_large")
    assert (no_call_id.status_code, no_call_id.json()["error"]) == (400, "missing_call_id")
    assert '"call": {"id": ...}' in no_call_id.json()["message"]
    assert fine.status_code == 200
    errors = [
        s.attributes.get("minivoice.webhook.error")
        for s in memory_exporter.get_finished_spans()
        if s.attributes
    ]
    assert errors == ["not_json", "too_large", "too_large", "missing_call_id", None]


def test_a_webhook_without_call_id_is_counted_by_the_pipeline(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_ingest(data, fsync=False) as ingest:
        provider = TracerProvider(resource=TEST_RESOURCE, shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=ingest.traces_url)))
        collector = WebhookCollector(tracer_provider=provider)
        try:
            with UvicornThread(collector) as server, httpx.Client() as client:
                lost = client.post(
                    server.url + "/", json={"event": "call.completed", "call": {"status": "busy"}}
                )
                fine = client.post(
                    server.url + "/", json={"event": "call.initiated", "call": {"id": "call_w1"}}
                )
        finally:
            collector.close()
            provider.shutdown()
    assert (lost.status_code, fine.status_code) == (400, 200)
    timeline.build(Settings(data_dir=data))
    with DataDir(data).connect_readonly() as con:
        assert con.execute("SELECT source, name, status_code FROM unattributed_spans").fetchall() == [
            ("webhook", "webhook", "ERROR")
        ]
        assert con.execute("SELECT call_id FROM calls").fetchall() == [("call_w1",)]


# ---- the answer_url middleware --------------------------------------------------------------------


async def _echo_or_nest(request: Request) -> Response:
    body = await request.body()
    if request.query_params.get("reply") == "nested":
        return Response(b'{"actions": ' + b"[" * DEEP + b"]" * DEEP + b"}", media_type="application/json")
    return Response(body, media_type="application/json")


def test_answer_url_middleware_with_nested_request_and_response(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    inner = Starlette(routes=[Route("/answer", _echo_or_nest, methods=["POST"])])
    app = AnswerUrlMiddleware(inner, tracer_provider=memory_provider)
    nested_request = b'{"call": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    headers = {**JSON, "X-MiniVoice-Call-Id": "call_deep"}
    with UvicornThread(app) as server, httpx.Client(timeout=30) as client:
        echoed = client.post(f"{server.url}/answer", content=nested_request, headers=headers)
        nested = client.post(f"{server.url}/answer?reply=nested", content=b"{}", headers=headers)
    assert echoed.status_code == 200 and echoed.content == nested_request  # the app saw it all, unchanged
    assert nested.status_code == 200 and len(nested.content) == 2 * DEEP + 13
    first, second = memory_exporter.get_finished_spans()
    for span in (first, second):
        assert span.attributes is not None
        assert span.attributes["minivoice.call_id"] == "call_deep"
        assert span.attributes["minivoice.action.problems"] == ("not_json",)
        assert span.status.status_code.name == "ERROR"
