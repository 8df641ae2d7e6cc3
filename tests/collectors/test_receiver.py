"""The stream receiver collector on a real `websockets` server, driven by a real client that
speaks MiniVoice's stream format over loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from collectors import call_root_span_id, call_trace_id, stats
from collectors.receiver import CONNECTIONS_WITHOUT_CALL_ID, InstrumentedConnection, instrument_receiver
from tests.otlp_sink import OTLPSink

CALL_ID = "call_123"
PAYLOAD = base64.b64encode(bytes(range(160))).decode()  # 160 bytes = 20 ms of mu-law


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "minivoice.stream", "version": "1"})


def start(call_id: str | None = CALL_ID) -> str:
    body: dict[str, Any] = {
        "stream_id": "str_9f2c",
        "tracks": ["inbound", "outbound"],
        "media_format": {"encoding": "audio/x-mulaw", "sample_rate": 8000, "channels": 1},
    }
    if call_id is not None:
        body["call_id"] = call_id
    return json.dumps({"event": "start", "sequence_number": 1, "start": body})


def media_frames(per_track: int, first_sequence: int = 2) -> list[str]:
    frames = []
    sequence = first_sequence
    for chunk in range(1, per_track + 1):
        for track in ("inbound", "outbound"):
            frames.append(
                json.dumps(
                    {
                        "event": "media",
                        "sequence_number": sequence,
                        "media": {
                            "track": track,
                            "chunk": chunk,
                            "timestamp": (chunk - 1) * 20,
                            "payload": PAYLOAD,
                        },
                    }
                )
            )
            sequence += 1
    return frames


def stop(sequence: int, reason: str = "stop_stream") -> str:
    return json.dumps(
        {"event": "stop", "sequence_number": sequence, "stop": {"call_id": CALL_ID, "reason": reason}}
    )


async def consume(websocket: ServerConnection) -> None:
    """A plain receiver: parse every message, as a real one would."""
    async for message in websocket:
        json.loads(message)


async def tolerant(websocket: ServerConnection) -> None:
    """A receiver that skips what it cannot parse."""
    async for message in websocket:
        try:
            json.loads(message)
        except ValueError:
            continue


@asynccontextmanager
async def receiver(handler: Callable[[Any], Awaitable[None]]) -> AsyncIterator[str]:
    """A websockets server on a free loopback port; yields its ws:// base URL."""
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def wait_for_spans(
    exporter: InMemorySpanExporter, count: int = 1, timeout: float = 10
) -> list[ReadableSpan]:
    deadline = time.monotonic() + timeout
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return list(exporter.get_finished_spans())


async def send_all(client: ClientConnection, messages: list[str | bytes]) -> None:
    for message in messages:
        await client.send(message)


def run_stream(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    messages: list[str | bytes],
    *,
    handler: Callable[[Any], Awaitable[None]] = consume,
    path: str = "/media",
    client_ends: str = "close",
    **instrument: Any,
) -> ReadableSpan:
    """Serve `handler` instrumented, play `messages` as MiniVoice, end as told; return the span.

    client_ends: `close` (1000 after the messages), `abort` (no close frame), or `wait` (until
    the receiver closes).
    """

    async def scenario() -> ReadableSpan:
        async with receiver(instrument_receiver(handler, tracer_provider=provider, **instrument)) as base:
            client = await connect(base + path)
            try:
                await send_all(client, messages)
                if client_ends == "abort":
                    await asyncio.sleep(0.05)  # let the server read what was sent
                    client.transport.abort()
                elif client_ends == "wait":
                    await client.wait_closed()
                else:
                    await client.close()
            except ConnectionClosed:
                pass
            finally:
                await client.close()
            spans = await wait_for_spans(exporter)
        assert len(spans) == 1, spans
        return spans[0]

    return asyncio.run(scenario())


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, dict(event.attributes or {})) for event in span.events]


@pytest.fixture
def receiver_log() -> Iterator[list[dict[str, Any]]]:
    """The JSON lines written to the `callscope.receiver` logger during the test."""
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(record.getMessage()))

    target = logging.getLogger("callscope.receiver")
    handler, previous = Collect(level=logging.INFO), target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    yield lines
    target.removeHandler(handler)
    target.setLevel(previous)


def test_a_normal_stream_stop_then_platform_close_1000(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    messages: list[str | bytes] = [connected(), start(), *media_frames(5), stop(12)]
    span = run_stream(memory_provider, memory_exporter, messages)

    assert span.name == "stream.receiver"
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == call_trace_id(CALL_ID)
    assert span.parent.span_id == call_root_span_id(CALL_ID)
    assert span.status.status_code is StatusCode.OK
    attributes = dict(span.attributes or {})
    assert attributes["minivoice.call_id"] == CALL_ID
    assert attributes["minivoice.call_id_source"] == "start"
    assert attributes["callscope.source"] == "receiver"
    assert attributes["minivoice.stream_id"] == "str_9f2c"
    assert attributes["minivoice.stream.tracks"] == ("inbound", "outbound")
    assert attributes["minivoice.media.encoding"] == "audio/x-mulaw"
    assert attributes["minivoice.media.frames"] == 10
    assert attributes["minivoice.media.bytes"] == 1600
    assert attributes["minivoice.media.inbound.frames"] == 5
    assert attributes["minivoice.media.outbound.bytes"] == 800
    assert attributes["minivoice.media.sequence_gaps"] == 0
    assert attributes["minivoice.media.gap_max_ms"] == 20
    assert attributes["minivoice.stop.reason"] == "stop_stream"
    assert attributes["minivoice.close.code"] == 1000
    assert attributes["minivoice.closed_by"] == "platform"
    assert attributes["minivoice.errors"] == 0
    assert attributes["url.path"] == "/media"
    assert attributes["client.address"] == "127.0.0.1"
    assert [name for name, _ in events(span)] == ["connected", "start", "first_media", "stop"]
    assert events(span)[2][1] == {
        "minivoice.media.track": "inbound",
        "minivoice.media.chunk": 1,
        "minivoice.media.timestamp_ms": 0,
    }
    assert span.start_time is not None and span.end_time is not None
    times = [event.timestamp for event in span.events]
    assert span.start_time <= times[0] <= times[1] <= times[2] <= times[3] <= span.end_time
    assert attributes["minivoice.media.last_at_unix_nano"] <= times[3]
    assert PAYLOAD not in json.dumps([attributes, events(span)], default=str)


def test_the_receiver_closing_1011_is_closed_by_receiver(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    async def gives_up(websocket: ServerConnection) -> None:
        frames = 0
        async for message in websocket:
            frames += json.loads(message)["event"] == "media"
            if frames == 3:
                await websocket.close(1011, "transcriber unavailable")

    messages: list[str | bytes] = [start(), *media_frames(2)[:3]]
    span = run_stream(memory_provider, memory_exporter, messages, handler=gives_up, client_ends="wait")

    attributes = dict(span.attributes or {})
    assert attributes["minivoice.closed_by"] == "receiver"
    assert attributes["minivoice.close.code"] == 1011
    assert attributes["minivoice.close.reason"] == "transcriber unavailable"
    assert attributes["minivoice.media.frames"] == 3
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "no stop message; close 1011 by receiver"


def test_a_network_drop_without_close_frame_is_1006_by_network(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    messages: list[str | bytes] = [start(), *media_frames(2)]
    span = run_stream(memory_provider, memory_exporter, messages, client_ends="abort")

    attributes = dict(span.attributes or {})
    assert attributes["minivoice.closed_by"] == "network"
    assert attributes["minivoice.close.code"] == 1006
    assert attributes["minivoice.media.frames"] == 4
    # The library's ConnectionClosedError escaping the handler is the close, not a handler bug.
    assert attributes["minivoice.errors"] == 0
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "no stop message; close 1006 by network"


def test_connected_but_no_media(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    span = run_stream(memory_provider, memory_exporter, [connected(), start(), stop(2, "call_ended")])

    attributes = dict(span.attributes or {})
    assert attributes["minivoice.media.frames"] == 0
    assert attributes["minivoice.media.inbound.frames"] == 0
    assert attributes["minivoice.media.outbound.frames"] == 0
    assert "minivoice.media.first_timestamp_ms" not in attributes
    assert [name for name, _ in events(span)] == ["connected", "start", "stop"]
    assert attributes["minivoice.stop.reason"] == "call_ended"


def test_binary_frames_and_invalid_json_are_errors_and_media_still_counts(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    messages: list[str | bytes] = [start(), b"\x00\x01\x02", "{not json", media_frames(1)[0], stop(3)]
    span = run_stream(memory_provider, memory_exporter, messages, handler=tolerant)

    attributes = dict(span.attributes or {})
    assert attributes["minivoice.errors"] == 2
    assert attributes["minivoice.error.types"] == ("binary_frame", "invalid_json")
    assert attributes["minivoice.media.frames"] == 1
    errors = [attrs for name, attrs in events(span) if name == "error"]
    assert [e["error.type"] for e in errors] == ["binary_frame", "invalid_json"]
    assert errors[0]["error.message"] == "binary message of 3 bytes; MiniVoice sends JSON text frames"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "2 error(s): binary_frame, invalid_json"


def test_call_id_from_the_query_when_start_has_none(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    messages: list[str | bytes] = [start(call_id=None), *media_frames(1), stop(4)]
    span = run_stream(memory_provider, memory_exporter, messages, path="/media?call_id=call_q&token=s3cret")

    attributes = dict(span.attributes or {})
    assert span.context is not None and span.context.trace_id == call_trace_id("call_q")
    assert attributes["minivoice.call_id"] == "call_q"
    assert attributes["minivoice.call_id_source"] == "query"
    assert attributes["url.query"] == "call_id=call_q&token=REDACTED"
    assert "s3cret" not in json.dumps([attributes, events(span)], default=str)


def test_no_call_id_at_all_still_gives_a_span_and_is_counted(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    before = stats().get(CONNECTIONS_WITHOUT_CALL_ID, 0)
    span = run_stream(memory_provider, memory_exporter, [connected()])

    attributes = dict(span.attributes or {})
    assert "minivoice.call_id" not in attributes
    assert span.parent is None  # a trace of its own: no call root to hang from
    assert attributes["minivoice.closed_by"] == "platform"
    assert stats()[CONNECTIONS_WITHOUT_CALL_ID] == before + 1


def test_a_handler_exception_is_recorded_and_reraised_unchanged(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    raised: list[BaseException] = []
    seen: list[BaseException] = []

    async def broken(websocket: InstrumentedConnection) -> None:
        await websocket.recv()
        error = ValueError("transcriber said no")
        raised.append(error)
        raise error

    instrumented = instrument_receiver(broken, tracer_provider=memory_provider)

    async def outer(websocket: ServerConnection) -> None:
        try:
            await instrumented(websocket)
        except ValueError as exc:
            seen.append(exc)

    async def scenario() -> list[ReadableSpan]:
        async with receiver(outer) as base, connect(base + "/media") as client:
            await client.send(start())
            await client.wait_closed()
            return await wait_for_spans(memory_exporter)

    (span,) = asyncio.run(scenario())
    assert seen and seen[0] is raised[0]
    attributes = dict(span.attributes or {})
    errors = [attrs for name, attrs in events(span) if name == "error"]
    assert errors == [{"error.type": "handler_exception", "error.message": "ValueError: transcriber said no"}]
    # The handler left the connection open; the server then closed it, and the span says so.
    assert attributes["minivoice.closed_by"] == "receiver"
    assert attributes["minivoice.close.code"] == 1000


def test_a_handler_that_returns_after_stop_leaves_the_close_to_the_server(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    async def until_stop(websocket: InstrumentedConnection) -> None:
        while json.loads(await websocket.recv())["event"] != "stop":
            pass

    messages: list[str | bytes] = [start(), *media_frames(1), stop(4)]
    span = run_stream(memory_provider, memory_exporter, messages, handler=until_stop, client_ends="wait")

    attributes = dict(span.attributes or {})
    assert attributes["minivoice.closed_by"] == "receiver"
    assert attributes["minivoice.close.code"] == 1000
    assert span.status.status_code is StatusCode.OK


def test_the_wrapped_connection_behaves_as_the_connection(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    seen: dict[str, Any] = {}

    async def uses_the_api(websocket: InstrumentedConnection) -> None:
        seen["path"] = websocket.request.path
        seen["remote"] = websocket.remote_address[0]
        async with websocket:  # closes with 1000 on the way out, as websockets does
            message = await websocket.recv()
            await websocket.send(json.dumps({"ack": json.loads(message)["event"]}))

    async def scenario() -> str:
        handler = instrument_receiver(uses_the_api, tracer_provider=memory_provider)
        async with receiver(handler) as base, connect(base + "/media?call_id=call_api") as client:
            await client.send(start(call_id=None))
            reply = str(await client.recv())
            await client.wait_closed()
        await wait_for_spans(memory_exporter)
        return reply

    assert json.loads(asyncio.run(scenario())) == {"ack": "start"}
    assert seen == {"path": "/media?call_id=call_api", "remote": "127.0.0.1"}
    (span,) = memory_exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["minivoice.closed_by"] == "receiver"
    assert attributes["minivoice.close.code"] == 1000
    assert attributes["minivoice.call_id"] == "call_api"


def test_recv_without_decoding_counts_text_frames_as_text(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    async def raw(websocket: InstrumentedConnection) -> None:
        while True:
            try:
                data = await websocket.recv(decode=False)
            except ConnectionClosed:
                return
            assert isinstance(data, bytes)

    messages: list[str | bytes] = [start(), *media_frames(2), stop(6)]
    span = run_stream(memory_provider, memory_exporter, messages, handler=raw)

    attributes = dict(span.attributes or {})
    assert attributes["minivoice.media.frames"] == 4
    assert attributes["minivoice.errors"] == 0


def test_iter_json_parses_once_and_counts_from_the_parsed_message(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    received: list[Any] = []
    refused: list[BaseException] = []

    async def parsed(websocket: InstrumentedConnection) -> None:
        while True:
            try:
                async for message in websocket.iter_json():
                    received.append(message)
                return
            except ValueError as exc:  # json.loads' own error, as the app would get it
                refused.append(exc)

    messages: list[str | bytes] = [connected(), start(), *media_frames(3), "{oops", b"\x01", stop(9)]
    span = run_stream(memory_provider, memory_exporter, messages, handler=parsed)

    assert [m["event"] for m in received] == ["connected", "start", *["media"] * 6, "stop"]
    assert [type(e).__name__ for e in refused] == ["JSONDecodeError", "JSONDecodeError"]
    attributes = dict(span.attributes or {})
    assert attributes["minivoice.media.frames"] == 6
    assert attributes["minivoice.media.bytes"] == 960
    assert attributes["minivoice.media.gap_max_ms"] == 20
    assert attributes["minivoice.error.types"] == ("invalid_json", "binary_frame")
    assert attributes["minivoice.stop.reason"] == "stop_stream"
    assert [name for name, _ in events(span)] == [
        "connected",
        "start",
        "first_media",
        "error",
        "error",
        "stop",
    ]


def test_streamed_fragments_are_counted_as_one_message(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    async def streaming(websocket: InstrumentedConnection) -> None:
        while True:
            try:
                parts = [part async for part in websocket.recv_streaming()]
            except ConnectionClosed:
                return
            json.loads("".join(parts))

    frame = media_frames(1)[0]

    async def scenario() -> list[ReadableSpan]:
        handler = instrument_receiver(streaming, tracer_provider=memory_provider)
        async with receiver(handler) as base, connect(base + "/media") as client:
            await client.send(start())
            await client.send([frame[:50], frame[50:200], frame[200:]])  # one fragmented message
        return await wait_for_spans(memory_exporter)

    (span,) = asyncio.run(scenario())
    attributes = dict(span.attributes or {})
    assert attributes["minivoice.messages"] == 2
    assert attributes["minivoice.media.inbound.frames"] == 1
    assert attributes["minivoice.media.bytes"] == 160


def test_a_skewed_receiver_clock_shows_in_every_timestamp(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    skew_ns = 7_000_000_000
    before = time.time_ns()
    span = run_stream(
        memory_provider,
        memory_exporter,
        [start(), *media_frames(1), stop(4)],
        clock=lambda: time.time_ns() + skew_ns,
    )
    after = time.time_ns()
    assert span.start_time is not None and span.end_time is not None
    assert before + skew_ns <= span.start_time <= span.end_time <= after + skew_ns
    assert all(before + skew_ns <= event.timestamp <= after + skew_ns for event in span.events)


def test_lifecycle_and_span_log_lines(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter, receiver_log: list[dict[str, Any]]
) -> None:
    messages: list[str | bytes] = [connected(), start(), *media_frames(3), "oops", stop(8)]
    span = run_stream(memory_provider, memory_exporter, messages, handler=tolerant, path="/media?token=abc")

    lifecycle = [line for line in receiver_log if line.get("record") == "lifecycle"]
    assert [line["event"] for line in lifecycle] == [
        "open",
        "connected",
        "start",
        "first_media",
        "error",
        "stop",
        "close",
    ]
    assert lifecycle[0]["call_id"] is None  # not known before `start`
    assert {line["call_id"] for line in lifecycle[2:]} == {CALL_ID}
    assert len({line["connection_id"] for line in lifecycle}) == 1
    assert lifecycle[0]["attributes"]["url.query"] == "token=REDACTED"
    assert lifecycle[4]["attributes"]["error.type"] == "invalid_json"
    close = lifecycle[-1]["attributes"]
    assert close["minivoice.closed_by"] == "platform"
    assert close["minivoice.close.code"] == 1000
    assert close["minivoice.media.frames"] == 6
    assert close["minivoice.errors"] == 1
    (span_line,) = [line for line in receiver_log if line.get("record") == "span"]
    assert span_line["name"] == "stream.receiver"
    assert span_line["call_id"] == CALL_ID
    assert span_line["start_ns"] == span.start_time
    assert span_line["attributes"]["minivoice.connection_id"] == lifecycle[0]["connection_id"]
    assert [event["name"] for event in span_line["events"]] == [
        "connected",
        "start",
        "first_media",
        "error",
        "stop",
    ]
    assert all(line["time_ns"] >= lifecycle[0]["time_ns"] for line in lifecycle)
    text = json.dumps(receiver_log)
    assert PAYLOAD not in text and "abc" not in text


class BrokenProvider(TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("collector bug")


def test_a_collector_failure_never_reaches_the_handler() -> None:
    echoed: list[str] = []

    async def echo(websocket: Any) -> None:
        async for message in websocket:
            await websocket.send(message)

    def broken_clock() -> int:
        raise RuntimeError("clock bug")

    async def scenario() -> None:
        for handler in (
            instrument_receiver(echo, tracer_provider=BrokenProvider()),
            instrument_receiver(echo, clock=broken_clock),
        ):
            async with receiver(handler) as base, connect(base + "/media") as client:
                for message in (start(), *media_frames(1), stop(4)):
                    await client.send(message)
                    echoed.append(str(await client.recv()))

    errors_before = stats()["internal_errors"]
    asyncio.run(scenario())
    assert len(echoed) == 8
    assert json.loads(echoed[0])["event"] == "start"
    assert stats()["internal_errors"] > errors_before


def test_the_span_reaches_an_otlp_endpoint(otlp_provider: TracerProvider, otlp_sink: OTLPSink) -> None:
    async def scenario() -> None:
        handler = instrument_receiver(consume, tracer_provider=otlp_provider)
        async with receiver(handler) as base, connect(base + "/media") as client:
            await send_all(client, [connected(), start(), *media_frames(2), stop(6)])

    asyncio.run(scenario())
    (row,) = otlp_sink.wait_for_spans(1, "stream.receiver", flush=otlp_provider.force_flush)
    assert row["trace_id"] == format(call_trace_id(CALL_ID), "032x")
    assert row["parent_span_id"] == format(call_root_span_id(CALL_ID), "016x")
    assert row["call_id"] == CALL_ID
    assert row["source"] == "receiver"
    assert row["kind"] == "SERVER"
    assert row["status_code"] == "OK"
    assert row["attributes"]["minivoice.media.frames"] == 4
    assert row["attributes"]["minivoice.stream.tracks"] == ["inbound", "outbound"]
    assert row["attributes"]["minivoice.closed_by"] == "platform"
    assert [event["name"] for event in row["events"]] == ["connected", "start", "first_media", "stop"]
