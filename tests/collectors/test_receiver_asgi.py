"""The stream receiver collector as ASGI middleware: a Starlette WebSocket endpoint under a real
uvicorn, driven by a real `websockets` client speaking MiniVoice's stream format."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from collectors import call_trace_id
from collectors.receiver import ReceiverMiddleware
from tests.collectors.test_receiver import CALL_ID, PAYLOAD, connected, media_frames, start, stop
from tests.otlp_sink import UvicornThread


async def tolerant(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            try:
                json.loads(message["text"])
            except ValueError:
                continue


async def gives_up(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        if json.loads(text)["event"] == "media":
            await websocket.close(1011, "transcriber unavailable")
            return


async def broken(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    raise RuntimeError("transcriber said no")


async def refuses(websocket: WebSocket) -> None:
    await websocket.close(1008)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
def server(memory_provider: TracerProvider) -> Iterator[str]:
    """uvicorn serving a Starlette app with the receiver middleware on the /media* paths."""
    routes = [
        WebSocketRoute("/media", tolerant),
        WebSocketRoute("/media-gives-up", gives_up),
        WebSocketRoute("/media-broken", broken),
        WebSocketRoute("/media-refuses", refuses),
        WebSocketRoute("/other", tolerant),
        Route("/health", health),
    ]
    app: Any = Starlette(routes=routes)
    for path in ("/media", "/media-gives-up", "/media-broken", "/media-refuses"):
        app = ReceiverMiddleware(app, path=path, tracer_provider=memory_provider)
    with UvicornThread(app) as running:
        yield running.url.replace("http://", "ws://")


def wait_for_spans(exporter: InMemorySpanExporter, count: int = 1, timeout: float = 10) -> list[ReadableSpan]:
    deadline = time.monotonic() + timeout
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(exporter.get_finished_spans())


def play(url: str, messages: list[str | bytes], ends: str = "close") -> None:
    async def scenario() -> None:
        client = await connect(url)
        try:
            for message in messages:
                await client.send(message)
            if ends == "abort":
                await asyncio.sleep(0.1)  # let the server read what was sent
                client.transport.abort()
            elif ends == "wait":
                await client.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            await client.close()

    asyncio.run(scenario())


def only_span(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, dict[str, Any]]:
    spans = wait_for_spans(exporter)
    assert len(spans) == 1, spans
    return spans[0], dict(spans[0].attributes or {})


def test_a_normal_stream_under_uvicorn(server: str, memory_exporter: InMemorySpanExporter) -> None:
    play(
        server + "/media?call_id=ignored_when_start_has_one",
        [connected(), start(), *media_frames(3), stop(8)],
    )

    span, attributes = only_span(memory_exporter)
    assert span.name == "stream.receiver"
    assert span.context is not None and span.context.trace_id == call_trace_id(CALL_ID)
    assert attributes["minivoice.call_id_source"] == "start"
    assert attributes["minivoice.media.frames"] == 6
    assert attributes["minivoice.media.bytes"] == 960
    assert attributes["minivoice.closed_by"] == "platform"
    assert attributes["minivoice.close.code"] == 1000
    assert attributes["url.path"] == "/media"
    assert attributes["url.query"] == "call_id=ignored_when_start_has_one"
    assert span.status.status_code is StatusCode.OK
    assert [event.name for event in span.events] == ["connected", "start", "first_media", "stop"]
    assert PAYLOAD not in json.dumps([attributes, [dict(e.attributes or {}) for e in span.events]])


def test_a_network_drop_under_uvicorn(server: str, memory_exporter: InMemorySpanExporter) -> None:
    play(server + "/media", [start(), *media_frames(2)], ends="abort")

    span, attributes = only_span(memory_exporter)
    assert attributes["minivoice.closed_by"] == "network"
    assert attributes["minivoice.close.code"] == 1006
    assert attributes["minivoice.media.frames"] == 4
    assert span.status.description == "no stop message; close 1006 by network"


def test_the_app_closing_1011(server: str, memory_exporter: InMemorySpanExporter) -> None:
    play(server + "/media-gives-up", [start(), *media_frames(2)], ends="wait")

    span, attributes = only_span(memory_exporter)
    assert attributes["minivoice.closed_by"] == "receiver"
    assert attributes["minivoice.close.code"] == 1011
    assert attributes["minivoice.close.reason"] == "transcriber unavailable"
    assert span.status.status_code is StatusCode.ERROR


def test_binary_and_invalid_frames_under_uvicorn(server: str, memory_exporter: InMemorySpanExporter) -> None:
    play(server + "/media", [start(), b"\x00\x01", "{oops", media_frames(1)[0], stop(3)])

    span, attributes = only_span(memory_exporter)
    assert attributes["minivoice.error.types"] == ("binary_frame", "invalid_json")
    assert attributes["minivoice.media.frames"] == 1
    assert [e.name for e in span.events] == ["start", "error", "error", "first_media", "stop"]


def test_an_app_exception_is_recorded(server: str, memory_exporter: InMemorySpanExporter) -> None:
    play(server + "/media-broken", [start()], ends="wait")

    span, attributes = only_span(memory_exporter)
    errors = [dict(e.attributes or {}) for e in span.events if e.name == "error"]
    assert errors == [
        {"error.type": "handler_exception", "error.message": "RuntimeError: transcriber said no"}
    ]
    assert attributes["minivoice.closed_by"] == "receiver"
    assert "minivoice.close.code" not in attributes  # uvicorn drops the connection: no close frame


def test_a_refused_handshake(server: str, memory_exporter: InMemorySpanExporter) -> None:
    with pytest.raises(InvalidStatus) as refused:
        play(server + "/media-refuses?call_id=call_refused", [])
    assert refused.value.response.status_code == 403

    _span, attributes = only_span(memory_exporter)
    assert attributes["minivoice.call_id"] == "call_refused"
    assert attributes["minivoice.error.types"] == ("handshake_rejected",)
    assert attributes["minivoice.closed_by"] == "receiver"


def test_other_paths_and_http_pass_through(server: str, memory_exporter: InMemorySpanExporter) -> None:
    play(server + "/other", [start(), stop(2)])
    response = httpx.get(server.replace("ws://", "http://") + "/health")
    assert response.status_code == 200 and response.text == "ok"
    time.sleep(0.2)  # a span, if one were wrongly made, would be finished by now
    assert memory_exporter.get_finished_spans() == ()
