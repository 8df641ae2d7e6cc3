"""Slowloris: 20 clients trickle their request bodies while a normal client is served.

Against ingest and the webhook collector, each on a real uvicorn: the slow bodies are answered
408 once the read timeout passes (ingest's `read_timeout_s`, the collector's `read_timeout`), and
while they hang, a normal request gets its 200. Nothing is timed here except the timeouts we set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from collectors.webhooks import WebhookCollector
from pipeline.ingest import running_ingest
from pipeline.samples import sample_request
from pipeline.storage import DataDir
from tests.otlp_sink import UvicornThread

SLOW_CLIENTS = 20
READ_TIMEOUT_S = 2.0


@dataclass
class SlowResult:
    status: int | None
    bytes_sent: int


async def _slow_client(port: int, path: str, content_type: str, started: asyncio.Event) -> SlowResult:
    """Send the headers and then one body byte every 0.2 s of a body that would take minutes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
        )
        await writer.drain()
        started.set()
        response = asyncio.ensure_future(reader.readline())
        while not response.done():
            try:
                writer.write(b"x")
                await writer.drain()
                sent += 1
            except ConnectionError:
                break
            await asyncio.wait({response}, timeout=0.2)
        line = await response
        status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None
        return SlowResult(status, sent)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _slowloris(
    port: int, path: str, content_type: str, normal_request: httpx.Request
) -> tuple[list[SlowResult], httpx.Response, int]:
    """Start the slow clients, serve one normal request while they hang; wait for the slow ones."""
    events = [asyncio.Event() for _ in range(SLOW_CLIENTS)]
    slow = [asyncio.ensure_future(_slow_client(port, path, content_type, e)) for e in events]
    await asyncio.gather(*(e.wait() for e in events))
    await asyncio.sleep(0.3)  # every slow client is now inside its body
    async with httpx.AsyncClient(timeout=10) as client:
        normal = await client.send(normal_request)
    still_hanging = sum(not task.done() for task in slow)
    results = await asyncio.wait_for(asyncio.gather(*slow), timeout=READ_TIMEOUT_S + 20)
    return results, normal, still_hanging


def test_ingest_times_out_slow_bodies_and_serves_others_meanwhile(tmp_path: Path) -> None:
    body = sample_request(10, seed=3).SerializeToString()
    with running_ingest(tmp_path / "data", fsync=False, read_timeout_s=READ_TIMEOUT_S) as ingest:
        request = httpx.Request(
            "POST", ingest.traces_url, content=body, headers={"content-type": "application/x-protobuf"}
        )
        results, normal, hanging = asyncio.run(
            _slowloris(ingest.port, "/v1/traces", "application/x-protobuf", request)
        )
        health = httpx.get(ingest.url + "/healthz").json()
        assert ingest.service.inflight_bytes == 0
    assert normal.status_code == 200
    assert hanging == SLOW_CLIENTS, "the normal request was served while every slow client still hung"
    assert [r.status for r in results] == [408] * SLOW_CLIENTS
    assert all(0 < r.bytes_sent < 100000 for r in results)
    assert health["errors"] == {"408": SLOW_CLIENTS}
    with DataDir(tmp_path / "data").connect_readonly() as con:
        assert con.execute("select count(*) from spans").fetchone() == (10,)


def test_webhook_collector_times_out_slow_bodies_and_serves_others_meanwhile(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    acked: list[str] = []
    collector = WebhookCollector(
        on_event=lambda webhook: acked.append(webhook.call_id),
        read_timeout=READ_TIMEOUT_S,
        tracer_provider=memory_provider,
    )
    delivery = {"event": "call.completed", "call": {"id": "call_normal", "status": "completed"}}
    try:
        with UvicornThread(collector) as server:
            request = httpx.Request(
                "POST",
                server.url + "/",
                content=json.dumps(delivery).encode(),
                headers={"content-type": "application/json"},
            )
            results, normal, hanging = asyncio.run(_slowloris(server.port, "/", "application/json", request))
    finally:
        collector.close()
    assert normal.status_code == 200 and normal.json() == {"received": True, "duplicate": False}
    assert hanging == SLOW_CLIENTS
    assert [r.status for r in results] == [408] * SLOW_CLIENTS
    assert acked == ["call_normal"]
    spans = memory_exporter.get_finished_spans()
    errors = [span.attributes.get("minivoice.webhook.error") for span in spans if span.attributes]
    assert sorted(map(str, errors)) == ["None"] + ["read_timeout"] * SLOW_CLIENTS


async def _slow_headers_client(port: int, started: asyncio.Event, *, silent: bool = False) -> SlowResult:
    """Connect and trickle the request line and headers one byte every 0.2 s (or send nothing),
    as the classic slowloris does; return the status the server answers, if any."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
    sent = 0
    try:
        started.set()
        response = asyncio.ensure_future(reader.read(4096))
        while not response.done():
            if not silent and sent < len(head):
                try:
                    writer.write(head[sent : sent + 1])
                    await writer.drain()
                    sent += 1
                except ConnectionError:
                    break
            await asyncio.wait({response}, timeout=0.2)
        data = await response
        status = int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None
        return SlowResult(status, sent)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _slow_headers(
    port: int, normal_request: httpx.Request
) -> tuple[list[SlowResult], httpx.Response, int]:
    events = [asyncio.Event() for _ in range(SLOW_CLIENTS)]
    slow = [
        asyncio.ensure_future(_slow_headers_client(port, e, silent=i % 2 == 1)) for i, e in enumerate(events)
    ]
    await asyncio.gather(*(e.wait() for e in events))
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(timeout=10) as client:
        normal = await client.send(normal_request)
    hanging = sum(not task.done() for task in slow)
    results = await asyncio.wait_for(asyncio.gather(*slow), timeout=READ_TIMEOUT_S + 20)
    return results, normal, hanging


async def _stalled_second_request(port: int, body: bytes) -> tuple[bytes, bytes]:
    """One whole request on a keep-alive connection, then half the headers of a second one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(head[:30])
        await writer.drain()
        second = await asyncio.wait_for(reader.read(4096), timeout=READ_TIMEOUT_S + 10)
        return first, second
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_ingest_times_out_slow_and_silent_request_headers(tmp_path: Path) -> None:
    # uvicorn bounds neither: without pipeline.http_timeouts these connections are held forever.
    body = sample_request(10, seed=4).SerializeToString()
    with running_ingest(tmp_path / "data", fsync=False, read_timeout_s=READ_TIMEOUT_S) as ingest:
        request = httpx.Request(
            "POST", ingest.traces_url, content=body, headers={"content-type": "application/x-protobuf"}
        )
        results, normal, hanging = asyncio.run(_slow_headers(ingest.port, request))
        first, second = asyncio.run(_stalled_second_request(ingest.port, body))
        health = httpx.get(ingest.url + "/healthz").json()
    assert normal.status_code == 200
    assert hanging == SLOW_CLIENTS, "the normal request was served while every slow client still hung"
    assert [r.status for r in results] == [408] * SLOW_CLIENTS
    assert all(r.bytes_sent > 0 for r in results[::2])  # the trickling half had sent part of their headers
    # Keep-alive: the first request is served, the stalled second one is answered 408 and closed.
    assert first.startswith(b"HTTP/1.1 200 ")
    assert second.startswith(b"HTTP/1.1 408 ") and b"connection: close" in second.lower()
    assert b"did not arrive within 2 s" in second
    assert health["errors"] == {"408": SLOW_CLIENTS + 1}
    with DataDir(tmp_path / "data").connect_readonly() as con:
        assert con.execute("select count(*) from spans").fetchone() == (10,)
