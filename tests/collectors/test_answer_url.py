"""The answer_url collector on real servers: uvicorn + Starlette, werkzeug + Flask, real OTLP export."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from collectors import counters, logs
from collectors.answer_url import AnswerUrlMiddleware, AnswerUrlRequest, AnswerUrlWSGIMiddleware
from collectors.identity import call_root_span_id_hex, call_trace_id_hex
from collectors.privacy import hash_phone
from collectors.tracing import CountingBatchSpanProcessor
from tests.otlp_sink import OTLPSink, UvicornThread, closed_port_endpoint

KEY = b"test-pii-key"
ANSWER_REQUEST = {
    "event": "call.answered",
    "created_at": "2026-05-29T12:09:58Z",
    "call": {
        "id": "call_123",
        "customer_id": "cust_123",
        "application_id": "app_123",
        "status": "in-progress",
        "direction": "outbound",
        "from": "+15551230001",
        "to": "+15551230002",
    },
}
VALID = {
    "actions": [{"type": "start_stream", "stream_url": "wss://media.example.com/minivoice", "track": "both"}]
}
FAILURE_CASE = {
    "actions": [
        {"type": "start_stream", "stream_url": "https://media.example.com/minivoice", "track": "speaker"}
    ]
}
CLEAR_NUMBERS = ("5551230001", "5551230002")


async def answer(request: Request) -> Response:
    """An answer_url app: the action to return is chosen by the test through ?case=."""
    case = request.query_params.get("case", "valid")
    await request.body()
    if case == "failure":
        return JSONResponse(FAILURE_CASE)
    if case == "secret":
        url = "wss://user:pw@media.example.com/minivoice?token=s3cr3t&call_id=call_123"
        return JSONResponse({"actions": [{"type": "start_stream", "stream_url": url, "track": "inbound"}]})
    if case == "text":
        return PlainTextResponse("hello, not json")
    if case == "boom":
        return JSONResponse({"error": "db down"}, status_code=503)
    if case == "raise":
        raise RuntimeError("answer_url handler bug")
    if case == "stream":

        async def chunks() -> Any:
            yield b'{"actions": [{"type": "start_stream", "stream_url": "wss://m.example.com/s", '
            yield b'"track": "both"}], "padding": "' + b"x" * 6000 + b'"}'

        return StreamingResponse(chunks(), media_type="application/json")
    return JSONResponse(VALID)


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type="application/octet-stream")


def starlette_app(**options: Any) -> Any:
    app = Starlette(
        routes=[Route("/answer", answer, methods=["POST", "GET"]), Route("/echo", echo, methods=["POST"])]
    )
    return AnswerUrlMiddleware(app, path=options.pop("path", "/answer"), pii_key=KEY, **options)


@pytest.fixture
def sink_and_provider(otlp_sink: OTLPSink, otlp_provider: TracerProvider) -> tuple[OTLPSink, TracerProvider]:
    return otlp_sink, otlp_provider


def _no_clear_numbers(row: Any) -> None:
    text = json.dumps(row, default=str)
    for digits in CLEAR_NUMBERS:
        assert digits not in text


def test_failure_case_is_exported_with_problems_and_privacy(sink_and_provider: Any) -> None:
    sink, provider = sink_and_provider
    with UvicornThread(starlette_app(tracer_provider=provider)) as server, httpx.Client() as client:
        reply = client.post(
            f"{server.url}/answer?case=failure", json=ANSWER_REQUEST, headers={"user-agent": "mv"}
        )
    assert reply.status_code == 200
    assert reply.json() == FAILURE_CASE  # the response is unchanged
    (row,) = sink.wait_for_spans(1, "answer_url", flush=provider.force_flush)
    assert row["kind"] == "SERVER"
    assert row["trace_id"] == call_trace_id_hex("call_123")
    assert row["parent_span_id"] == call_root_span_id_hex("call_123")
    assert row["call_id"] == "call_123"
    assert row["source"] == "answer_url"
    assert row["status_code"] == "ERROR"
    assert row["status_message"] == "invalid actions: stream_url_not_wss, invalid_track"
    attrs = row["attributes"]
    assert attrs["minivoice.call_id_source"] == "body"
    assert attrs["minivoice.action.valid"] is False
    assert attrs["minivoice.action.problems"] == ["stream_url_not_wss", "invalid_track"]
    assert len(attrs["minivoice.action.problem_messages"]) == 2
    assert attrs["minivoice.action.types"] == ["start_stream"]
    assert attrs["minivoice.action.count"] == 1
    assert attrs["minivoice.stream_url"] == "https://media.example.com/minivoice"
    assert attrs["minivoice.track"] == "speaker"
    assert attrs["minivoice.answer_url.response_json"] is True
    assert json.loads(attrs["minivoice.answer_url.response_body"]) == FAILURE_CASE
    assert attrs["minivoice.answer_url.response_truncated"] is False
    assert attrs["minivoice.answer_url.latency_ms"] > 0
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "/answer"
    assert attrs["url.path"] == "/answer"
    assert attrs["url.query"] == "case=REDACTED"
    assert attrs["user_agent.original"] == "mv"
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["server.port"] == server.port
    assert attrs["minivoice.event"] == "call.answered"
    assert attrs["minivoice.call.status"] == "in-progress"
    assert attrs["minivoice.customer_id"] == "cust_123"
    assert attrs["minivoice.application_id"] == "app_123"
    assert attrs["minivoice.direction"] == "outbound"
    assert attrs["minivoice.from.masked"] == "+1555***0001"
    assert attrs["minivoice.to.hash"] == hash_phone("+15551230002", KEY)
    _no_clear_numbers(row)
    assert row["end_ns"] > row["start_ns"]


def test_valid_action_and_redacted_stream_url(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    with UvicornThread(starlette_app(tracer_provider=memory_provider)) as server, httpx.Client() as client:
        assert client.post(f"{server.url}/answer", json=ANSWER_REQUEST).json() == VALID
        reply = client.post(f"{server.url}/answer?case=secret", json=ANSWER_REQUEST)
    assert "s3cr3t" in reply.text  # the app's answer reaches MiniVoice untouched...
    valid, secret = memory_exporter.get_finished_spans()
    assert valid.status.status_code.name == "UNSET"
    assert valid.attributes["minivoice.action.valid"] is True
    assert "minivoice.action.problems" not in valid.attributes
    assert valid.attributes["minivoice.track"] == "both"
    # ...but the span never holds the secret or the userinfo
    recorded = json.dumps(dict(secret.attributes))
    assert "s3cr3t" not in recorded and "user:pw" not in recorded
    assert secret.attributes["minivoice.stream_url"] == (
        "wss://media.example.com/minivoice?token=REDACTED&call_id=call_123"
    )


def test_call_id_from_header_query_and_custom_extractor(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    def from_custom_header(request: AnswerUrlRequest) -> str | None:
        return request.headers.get("x-our-call")

    app = starlette_app(tracer_provider=memory_provider, call_id=from_custom_header)
    with UvicornThread(app) as server, httpx.Client() as client:
        client.post(f"{server.url}/answer", content=b"{}", headers={"X-MiniVoice-Call-Id": "call_h"})
        client.get(f"{server.url}/answer?call_id=call_q")
        client.post(f"{server.url}/answer", json=ANSWER_REQUEST, headers={"x-our-call": "call_c"})
        client.post(f"{server.url}/answer", content=b"not json")
    header, query, custom, none = memory_exporter.get_finished_spans()
    assert (header.attributes["minivoice.call_id"], header.attributes["minivoice.call_id_source"]) == (
        "call_h",
        "header",
    )
    assert (query.attributes["minivoice.call_id"], query.attributes["minivoice.call_id_source"]) == (
        "call_q",
        "query",
    )
    assert (custom.attributes["minivoice.call_id"], custom.attributes["minivoice.call_id_source"]) == (
        "call_c",
        "custom",
    )
    assert format(custom.context.trace_id, "032x") == call_trace_id_hex("call_c")
    assert "minivoice.call_id" not in none.attributes
    assert none.parent is None


def test_a_failing_extractor_is_counted_and_the_app_is_unaffected(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: AnswerUrlRequest) -> str | None:
        raise KeyError("collector-side bug")

    before = counters.stats()["internal_errors"]
    app = starlette_app(tracer_provider=memory_provider, call_id=broken)
    with caplog.at_level(logging.CRITICAL), UvicornThread(app) as server, httpx.Client() as client:
        replies = [client.post(f"{server.url}/answer?case=failure", json=ANSWER_REQUEST) for _ in range(2)]
    assert [r.json() for r in replies] == [FAILURE_CASE, FAILURE_CASE]
    assert counters.stats()["internal_errors"] == before + 2
    spans = memory_exporter.get_finished_spans()
    assert [s.attributes["minivoice.call_id_source"] for s in spans] == ["body", "body"]


def test_streaming_response_and_large_request_body_pass_through(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    big = bytes(range(256)) * (9 * 1024)  # 2.25 MiB, over the 1 MiB read-ahead
    app = starlette_app(tracer_provider=memory_provider)
    with UvicornThread(app) as server, httpx.Client() as client:
        streamed = client.post(f"{server.url}/answer?case=stream", json=ANSWER_REQUEST)
        echoed = client.post(f"{server.url}/echo", content=big)
    assert echoed.content == big  # other paths are untouched...
    assert len(memory_exporter.get_finished_spans()) == 1  # ...and not recorded
    assert json.loads(streamed.content)["actions"][0]["track"] == "both"
    (span,) = memory_exporter.get_finished_spans()
    assert span.attributes["http.response.body.size"] == len(streamed.content)
    assert span.attributes["minivoice.answer_url.response_truncated"] is True
    assert len(span.attributes["minivoice.answer_url.response_body"]) == 4096
    assert span.attributes["minivoice.action.valid"] is True


def test_request_body_over_the_cap_is_replayed_in_full(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    big = b'{"call": {"id": "call_big"}, "pad": "' + b"y" * 3000 + b'"}'
    inner = Starlette(routes=[Route("/answer", echo, methods=["POST"])])
    app = AnswerUrlMiddleware(inner, tracer_provider=memory_provider, pii_key=KEY, max_body_bytes=1024)
    with UvicornThread(app) as server, httpx.Client() as client:
        reply = client.post(f"{server.url}/answer", content=big, headers={"X-MiniVoice-Call-Id": "call_hdr"})
    assert reply.content == big
    (span,) = memory_exporter.get_finished_spans()
    # the body was cut at the cap, so the call id came from the header
    assert span.attributes["minivoice.call_id"] == "call_hdr"
    assert span.attributes["minivoice.answer_url.validation_skipped"] == "too_large"
    assert "minivoice.action.valid" not in span.attributes


def test_non_json_and_5xx_are_errors(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    with UvicornThread(starlette_app(tracer_provider=memory_provider)) as server, httpx.Client() as client:
        client.post(f"{server.url}/answer?case=text", json=ANSWER_REQUEST)
        assert client.post(f"{server.url}/answer?case=boom", json=ANSWER_REQUEST).status_code == 503
    text, boom = memory_exporter.get_finished_spans()
    assert text.status.description == "response is not JSON"
    assert text.attributes["minivoice.action.problems"] == ("not_json",)
    assert text.attributes["minivoice.answer_url.response_json"] is False
    assert boom.status.status_code.name == "ERROR"
    assert boom.attributes["error.type"] == "503"
    assert boom.status.description.startswith("HTTP 503")


def test_app_exception_is_recorded_and_reraised_unchanged(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    failure = RuntimeError("answer_url handler bug")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise failure

    middleware = AnswerUrlMiddleware(app, tracer_provider=memory_provider, pii_key=KEY)
    body = json.dumps(ANSWER_REQUEST).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "method": "POST", "path": "/answer", "headers": [], "query_string": b""}
    with pytest.raises(RuntimeError) as raised:
        asyncio.run(middleware(scope, receive, send))
    assert raised.value is failure
    (span,) = memory_exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.attributes["minivoice.call_id"] == "call_123"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.message"] == "answer_url handler bug"


def test_exception_through_a_real_server(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    with UvicornThread(starlette_app(tracer_provider=memory_provider)) as server, httpx.Client() as client:
        assert client.post(f"{server.url}/answer?case=raise", json=ANSWER_REQUEST).status_code == 500
    (span,) = memory_exporter.get_finished_spans()
    assert span.attributes["error.type"] == "RuntimeError"


def test_exporter_down_changes_nothing_for_the_app(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(
        CountingBatchSpanProcessor(
            OTLPSpanExporter(endpoint=closed_port_endpoint(), timeout=0.5),
            max_queue_size=2,
            max_export_batch_size=1,
            schedule_delay_millis=10,
        )
    )
    before = counters.stats()
    with caplog.at_level(logging.CRITICAL):
        with UvicornThread(starlette_app(tracer_provider=provider)) as server, httpx.Client() as client:
            replies = [
                client.post(f"{server.url}/answer?case=failure", json=ANSWER_REQUEST) for _ in range(10)
            ]
        provider.shutdown()
    assert [r.json() for r in replies] == [FAILURE_CASE] * 10
    after = counters.stats()
    assert after["spans_ended"] - before["spans_ended"] == 10
    assert after["spans_dropped"] - before["spans_dropped"] == 10
    assert after["spans_exported"] == before["spans_exported"]


def test_log_line_per_request_without_phone_numbers(tmp_path: Path, memory_provider: TracerProvider) -> None:
    with logs.write_logs_to(tmp_path) as files:
        with (
            UvicornThread(starlette_app(tracer_provider=memory_provider)) as server,
            httpx.Client() as client,
        ):
            client.post(f"{server.url}/answer?case=failure", json=ANSWER_REQUEST)
        text = files.path("answer_url").read_text()
    (line,) = text.splitlines()
    record = json.loads(line)
    assert record["source"] == "answer_url"
    assert record["call_id"] == "call_123"
    assert record["attributes"]["minivoice.action.problems"] == ["stream_url_not_wss", "invalid_track"]
    for digits in CLEAR_NUMBERS:
        assert digits not in line


# --- Flask through a real WSGI server ------------------------------------------------------------


@pytest.fixture
def flask_server(memory_provider: TracerProvider) -> Iterator[str]:
    from flask import Flask, jsonify, request
    from werkzeug.serving import make_server

    flask_app = Flask("answer")

    @flask_app.post("/answer")
    def flask_answer() -> Any:
        document = request.get_json()  # the app reads the body the collector read ahead
        if document["call"]["direction"] == "outbound":
            return jsonify(FAILURE_CASE)
        return jsonify(VALID)

    @flask_app.post("/upload")
    def upload() -> Any:
        return str(len(request.get_data()))

    flask_app.wsgi_app = AnswerUrlWSGIMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, path="/answer", tracer_provider=memory_provider, pii_key=KEY
    )
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_flask_answer_url(flask_server: str, memory_exporter: InMemorySpanExporter) -> None:
    with httpx.Client() as client:
        reply = client.post(f"{flask_server}/answer", json=ANSWER_REQUEST)
        uploaded = client.post(f"{flask_server}/upload", content=b"z" * 100_000)
    assert reply.json() == FAILURE_CASE
    assert uploaded.text == "100000"
    # WSGI servers call close(), which ends the span, after the response is on the wire
    deadline = time.monotonic() + 5
    while not memory_exporter.get_finished_spans() and time.monotonic() < deadline:
        time.sleep(0.01)
    (span,) = memory_exporter.get_finished_spans()
    assert span.name == "answer_url"
    assert format(span.context.trace_id, "032x") == call_trace_id_hex("call_123")
    assert format(span.parent.span_id, "016x") == call_root_span_id_hex("call_123")
    assert span.attributes["minivoice.action.problems"] == ("stream_url_not_wss", "invalid_track")
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["minivoice.call_id_source"] == "body"
    assert span.attributes["minivoice.from.masked"] == "+1555***0001"
    assert span.status.status_code.name == "ERROR"
    assert span.end_time > span.start_time
    text = json.dumps(dict(span.attributes))
    for digits in CLEAR_NUMBERS:
        assert digits not in text


def test_wsgi_exception_is_recorded_and_reraised_unchanged(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    import io

    failure = LookupError("flask view bug")

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        assert json.loads(environ["wsgi.input"].read()) == ANSWER_REQUEST  # replayed in full
        raise failure

    middleware = AnswerUrlWSGIMiddleware(wsgi_app, tracer_provider=memory_provider, pii_key=KEY)
    body = json.dumps(ANSWER_REQUEST).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/answer",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "HTTP_HOST": "app.example:8080",
    }
    with pytest.raises(LookupError) as raised:
        middleware(environ, lambda status, headers, exc_info=None: None)
    assert raised.value is failure
    (span,) = memory_exporter.get_finished_spans()
    assert span.attributes["error.type"] == "LookupError"
    assert span.attributes["server.address"] == "app.example"
    assert span.attributes["server.port"] == 8080
    assert span.attributes["minivoice.call_id"] == "call_123"
    assert span.status.status_code.name == "ERROR"


def _asgi_call(middleware: Any, scope: dict[str, Any], body: bytes) -> list[Any]:
    """One in-process ASGI request; returns what the middleware sent on."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


def _json_app(after_response: float = 0.0) -> Any:
    """A plain ASGI answer_url app; it can keep working `after_response` seconds once it has answered."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        body = json.dumps(VALID).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        if after_response:
            await asyncio.sleep(after_response)

    return app


def test_the_span_ends_with_the_responses_last_byte(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    """The latency is the app's, until its last byte: what the app (or the collector, whose work
    comes after) does once the response is sent is not in it."""
    middleware = AnswerUrlMiddleware(
        _json_app(after_response=0.3), tracer_provider=memory_provider, pii_key=KEY
    )
    scope = {"type": "http", "method": "POST", "path": "/answer", "headers": [], "query_string": b""}
    began = time.perf_counter()
    sent = _asgi_call(middleware, scope, json.dumps(ANSWER_REQUEST).encode())
    assert time.perf_counter() - began >= 0.3
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (span,) = memory_exporter.get_finished_spans()
    assert span.attributes["minivoice.answer_url.latency_ms"] < 250
    assert (span.end_time - span.start_time) / 1e6 < 250
    assert span.attributes["minivoice.action.valid"] is True
    assert span.attributes["minivoice.call_id"] == "call_123"


def test_a_request_the_collector_cannot_read_is_counted_and_the_app_is_unaffected(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    """Header names that are not bytes break the collector's (deferred) request decoding: counted
    in stats(), no span, and the response is exactly the app's."""
    middleware = AnswerUrlMiddleware(_json_app(), tracer_provider=memory_provider, pii_key=KEY)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/answer",
        "headers": [("host", 1)],
        "query_string": b"",
    }
    before = counters.stats()["internal_errors"]
    sent = _asgi_call(middleware, scope, json.dumps(ANSWER_REQUEST).encode())
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == VALID
    assert counters.stats()["internal_errors"] == before + 1
    assert memory_exporter.get_finished_spans() == ()


def test_a_response_the_collector_cannot_read_still_reaches_the_server(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": object()})  # not bytes: the server's problem

    middleware = AnswerUrlMiddleware(app, tracer_provider=memory_provider, pii_key=KEY)
    scope = {"type": "http", "method": "POST", "path": "/answer", "headers": [], "query_string": b""}
    before = counters.stats()["internal_errors"]
    sent = _asgi_call(middleware, scope, json.dumps(ANSWER_REQUEST).encode())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert counters.stats()["internal_errors"] == before + 1
    (span,) = memory_exporter.get_finished_spans()  # what was seen is still recorded
    assert span.attributes["http.response.status_code"] == 200
