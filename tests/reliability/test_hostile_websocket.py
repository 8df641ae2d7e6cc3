"""A hostile stream against the instrumented receiver (a real `websockets` server and client):
binary frames and 16 MB frames, where MiniVoice sends ~350-byte JSON text frames.

- With a server that accepts 16 MB messages, the collector records each oversized frame as a
  `frame_too_large` error without parsing it, binary frames as `binary_frame`, and keeps counting
  the media around them; the handler gets every message unchanged.
- With the `websockets` default (1 MiB), the server closes the connection with 1009; the span
  records the close code and that the receiver closed it, and is still exported.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from collectors import instrument_receiver
from tests.collectors.test_receiver import media_frames, start, stop, wait_for_spans

SIXTEEN_MB = 16 * 1024 * 1024


def _huge_media_frame() -> str:
    return json.dumps(
        {"event": "media", "sequence_number": 99, "media": {"track": "inbound", "payload": "A" * SIXTEEN_MB}}
    )


def _play(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    messages: list[str | bytes],
    max_size: int | None,
) -> tuple[dict[str, Any], list[int], int | None]:
    """Serve an instrumented receiver, send `messages`; the span's attributes, the sizes the
    handler got, and the close code the client saw."""
    received: list[int] = []

    async def handler(websocket: ServerConnection) -> None:
        async for message in websocket:
            received.append(len(message))

    async def scenario() -> tuple[dict[str, Any], int | None]:
        server = await serve(
            instrument_receiver(handler, tracer_provider=provider), "127.0.0.1", 0, max_size=max_size
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            code = None
            async with connect(f"ws://127.0.0.1:{port}/media", max_size=None) as client:
                try:
                    for message in messages:
                        await client.send(message)
                    await client.close()
                except ConnectionClosed:
                    pass
                await client.wait_closed()
                code = client.close_code
            (span,) = await wait_for_spans(exporter)
        return dict(span.attributes or {}), code

    attributes, code = asyncio.run(scenario())
    return attributes, received, code


def test_binary_and_16_mb_frames_are_recorded_not_parsed(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    frames = media_frames(3)
    messages: list[str | bytes] = [
        start(),
        frames[0],
        b"\x00" * 1024,
        _huge_media_frame(),
        bytes(SIXTEEN_MB),
        *frames[1:],
        stop(9),
    ]
    attributes, received, code = _play(memory_provider, memory_exporter, messages, max_size=32 * 1024 * 1024)
    assert code == 1000
    assert len(received) == len(messages)  # the handler saw every message
    assert received[3] > SIXTEEN_MB and received[4] == SIXTEEN_MB
    assert attributes["minivoice.media.frames"] == 6  # the real frames around them all counted
    assert attributes["minivoice.errors"] == 3
    assert set(attributes["minivoice.error.types"]) == {"binary_frame", "frame_too_large"}
    assert attributes["minivoice.close.code"] == 1000
    assert "A" * 64 not in json.dumps(attributes, default=str)  # no payload recorded


def test_a_16_mb_frame_over_the_server_limit_closes_1009_and_is_recorded(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    messages: list[str | bytes] = [start(), *media_frames(2), _huge_media_frame(), *media_frames(1, 6)]
    attributes, received, code = _play(memory_provider, memory_exporter, messages, max_size=1024 * 1024)
    assert code == 1009  # message too big
    assert len(received) == 5  # start and the four media frames before it
    assert attributes["minivoice.media.frames"] == 4
    assert attributes["minivoice.close.code"] == 1009
    assert attributes["minivoice.closed_by"] == "receiver"
