"""The reference stream receiver: the one the MiniVoice docs' Testing section asks for.

"Use a WebSocket receiver that logs connection open, media received, disconnect, and errors."
This one accepts MiniVoice streams (ws, or wss with a certificate), drops the audio, and logs:

- one human-readable line per moment that matters (open, start, first media, stop, error,
  close with code, reason and who closed), made from the collector's own lifecycle log lines;
- a media summary every few seconds while frames arrive (never a line per frame);
- optionally the collector's JSON lines to a file, for `callscope backfill --receiver`.

It is instrumented with `collectors.receiver.instrument_receiver`, so each connection is also a
`stream.receiver` span exported to callscope (or anywhere OTLP goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry import trace

from collectors import logs
from collectors.receiver import SOURCE, InstrumentedConnection, ReceiverSession, instrument_receiver
from collectors.tracing import Clock

CONSOLE_LOGGER = "callscope.reference_receiver"
"""The human-readable log of the reference receiver."""

console = logging.getLogger(CONSOLE_LOGGER)


def _short(connection_id: object) -> str:
    return str(connection_id or "?").replace("-", "")[:8]


def describe(line: dict[str, Any]) -> str | None:
    """One human-readable line for a collector lifecycle log line (None for other lines)."""
    if line.get("record") != "lifecycle":
        return None
    event = str(line.get("event"))
    attributes: dict[str, Any] = line.get("attributes") or {}
    head = f"{event:<11} conn={_short(line.get('connection_id'))}"
    if event == "open":
        query = attributes.get("url.query")
        target = str(attributes.get("url.path", "")) + (f"?{query}" if query else "")
        return f"{head} client={attributes.get('client.address', '?')} path={target}"
    if event == "connected":
        protocol, version = attributes.get("minivoice.protocol"), attributes.get("minivoice.protocol_version")
        return f"{head} protocol={protocol} version={version}"
    if event == "start":
        tracks = ",".join(attributes.get("minivoice.stream.tracks") or []) or "?"
        media_format = "/".join(
            str(attributes.get(key, "?"))
            for key in ("minivoice.media.encoding", "minivoice.media.sample_rate", "minivoice.media.channels")
        )
        return (
            f"{head} call_id={attributes.get('minivoice.call_id', '?')} "
            f"stream_id={attributes.get('minivoice.stream_id', '?')} tracks={tracks} format={media_format}"
        )
    if event == "first_media":
        return (
            f"{head} media received: first frame track={attributes.get('minivoice.media.track')} "
            f"chunk={attributes.get('minivoice.media.chunk', '?')} "
            f"timestamp={attributes.get('minivoice.media.timestamp_ms')}ms"
        )
    if event == "stop":
        return f"{head} reason={attributes.get('minivoice.stop.reason', '?')}"
    if event == "error":
        return f"{head} {attributes.get('error.type')}: {attributes.get('error.message')}"
    if event == "close":
        reason = attributes.get("minivoice.close.reason")
        seconds = float(attributes.get("duration_ms", 0)) / 1000
        totals = (
            f"{attributes.get('minivoice.media.frames', 0)} frames, "
            f"{attributes.get('minivoice.media.bytes', 0)} bytes, "
            f"{attributes.get('minivoice.errors', 0)} errors"
        )
        return (
            f"{head} disconnected code={attributes.get('minivoice.close.code', 'none')} "
            f"by={attributes.get('minivoice.closed_by')}"
            + (f" reason={reason!r}" if reason else "")
            + f" after {seconds:.1f}s: {totals}"
        )
    return f"{head} {json.dumps(attributes)}"


def media_summary(session: ReceiverSession, previous_frames: int, interval_s: float) -> str:
    """The periodic "media received" line: totals so far per track, what is new, gaps."""
    stats = session.stats
    per_track = ", ".join(f"{track} {track_stats.frames}" for track, track_stats in stats.track_stats.items())
    return (
        f"{'media':<11} conn={_short(session.connection_id)} media received: "
        f"+{stats.frames - previous_frames} frames in {interval_s:g}s, {stats.frames} frames "
        f"({per_track or 'no track'}), {stats.bytes} bytes so far; "
        f"sequence gaps {stats.sequence_gaps}, largest timestamp gap {stats.gap_max_ms} ms"
    )


class ConsoleHandler(logging.Handler):
    """Turns the collector's JSON lines on `callscope.receiver` into readable console lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = describe(json.loads(record.getMessage()))
        except (ValueError, TypeError, AttributeError):
            return
        if text is not None:
            console.info(text)


class ReferenceReceiver:
    """A MiniVoice stream receiver that logs and drops the audio; instrumented.

    `handler` is the instrumented `websockets` handler; `serve()` runs a server until `stop`.
    """

    def __init__(
        self,
        *,
        summary_interval_s: float = 5.0,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.summary_interval_s = summary_interval_s
        self.connections = 0
        self.handler = instrument_receiver(self._receive, tracer_provider=tracer_provider, clock=clock)

    async def _receive(self, websocket: InstrumentedConnection) -> None:
        from websockets.exceptions import ConnectionClosedError

        self.connections += 1
        summaries = asyncio.create_task(self._summaries(websocket.session))
        try:
            async for _message in websocket:
                # Receiver design, per the MiniVoice docs: process or forward media quickly.
                # The reference receiver only lets the collector count it.
                pass
        except ConnectionClosedError:
            pass  # a network drop or protocol error: the close line says which
        finally:
            summaries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await summaries

    async def _summaries(self, session: ReceiverSession) -> None:
        reported = 0
        while True:
            await asyncio.sleep(self.summary_interval_s)
            if session.stats.frames != reported:
                console.info(media_summary(session, reported, self.summary_interval_s))
                reported = session.stats.frames

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ready: Callable[[str], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serve until `stop` is set (forever without one). `ready` gets the ws(s):// URL."""
        from websockets.asyncio.server import serve

        async with serve(self.handler, host, port, ssl=ssl_context, max_size=16 * 1024 * 1024) as server:
            bound = server.sockets[0].getsockname()
            scheme = "wss" if ssl_context is not None else "ws"
            shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            if ready is not None:
                ready(f"{scheme}://{shown_host}:{bound[1]}")
            await (stop or asyncio.Event()).wait()


def server_ssl_context(certfile: Path, keyfile: Path | None = None) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate (chain) and key, for wss://."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context


class ConsoleSetup:
    """Wires the logs of a reference receiver run; `close()` undoes it."""

    def __init__(self, json_log: Path | None = None, stream: Any = None) -> None:
        self.receiver_logger = logs.logger_for(SOURCE)
        self._previous = (self.receiver_logger.level, self.receiver_logger.propagate, console.level)
        self.receiver_logger.setLevel(logging.INFO)
        self.receiver_logger.propagate = False
        self.console_handler = ConsoleHandler()
        self.receiver_logger.addHandler(self.console_handler)
        self.output = logging.StreamHandler(stream)
        self.output.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        console.addHandler(self.output)
        console.setLevel(logging.INFO)
        console.propagate = False
        self.json_handler: logging.Handler | None = None
        if json_log is not None:
            self.json_handler = logs.json_file_handler(json_log)
            self.receiver_logger.addHandler(self.json_handler)

    def close(self) -> None:
        """Detach and close every handler added."""
        self.receiver_logger.removeHandler(self.console_handler)
        console.removeHandler(self.output)
        if self.json_handler is not None:
            self.receiver_logger.removeHandler(self.json_handler)
            self.json_handler.close()
        level, propagate, console_level = self._previous
        self.receiver_logger.setLevel(level)
        self.receiver_logger.propagate = propagate
        console.setLevel(console_level)
