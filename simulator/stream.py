"""The platform side of the media stream: a `wss` client that plays a call's audio.

MiniVoice opens a WebSocket to the `stream_url` of an accepted `start_stream`, sends
`connected`, `start`, 20 ms µ-law `media` frames and, when the call ends, `stop`, then closes
with 1000. This module does exactly that, paced in real time or accelerated, and can inject the
network's fault: cutting the TCP connection mid-stream with no close frame (the receiver sees 1006).
Whatever happens is written into the call's `CallOutcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
import uuid
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from collectors.privacy import redact_url
from simulator.audio import FRAME_MS, FRAMES_PER_SECOND, tone_payloads
from simulator.messages import (
    TRACKS_FOR,
    connected_message,
    media_message,
    start_message,
    stop_message,
)
from simulator.outcome import CallOutcome

CLOSE_ABNORMAL = 1006


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """How the platform plays one stream."""

    stream_url: str
    call_id: str
    track: str = "both"
    media_seconds: float = 5.0
    speed: float = 1.0
    """1.0 plays in real time; 10.0 ten times faster; `math.inf` as fast as the socket allows."""
    send_media: bool = True
    drop_after_frames: int | None = None
    """Cut the TCP connection (no close frame) after this many media frames per track."""
    stop_reason: Literal["call_ended", "stop_stream"] = "call_ended"


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Transport settings for every stream the platform opens."""

    ssl_context: ssl.SSLContext | None = None
    """Trust for `wss` receivers; None uses the system's default trust store."""
    open_timeout_s: float = 5.0
    close_timeout_s: float = 5.0
    use_system_proxy: bool = False


def describe_connect_error(exc: BaseException, url: str, open_timeout_s: float) -> str:
    """Why a stream connection failed, in the terms an on-call engineer checks next."""
    if isinstance(exc, InvalidStatus):
        return (
            f"receiver rejected the WebSocket handshake with HTTP {exc.response.status_code} "
            "(expected 101 Switching Protocols)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: {exc.verify_message or exc.reason} (certificate not trusted)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {_host_port(url)}: nothing is listening there"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed for {_host_port(url)}: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"no WebSocket handshake within {open_timeout_s:g} s"
    if isinstance(exc, InvalidURI):
        return f"stream_url is not a WebSocket URL: {exc}"
    if isinstance(exc, InvalidHandshake):
        return f"WebSocket handshake failed: {exc}"
    if isinstance(exc, OSError):
        return f"connection to {_host_port(url)} failed: {exc.strerror or exc}"
    return f"connection failed: {type(exc).__name__}: {exc}"


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        return parts.netloc
    return f"{parts.hostname}:{port}"


async def stream_media(plan: StreamPlan, options: StreamOptions, outcome: CallOutcome) -> None:
    """Open the stream, play it, end it; record every step in `outcome`. Never raises for I/O."""
    try:
        ws = await connect(
            plan.stream_url,
            ssl=options.ssl_context if plan.stream_url.startswith("wss:") else None,
            open_timeout=options.open_timeout_s,
            close_timeout=options.close_timeout_s,
            ping_interval=None,
            compression=None,
            proxy=True if options.use_system_proxy else None,
            user_agent_header="MiniVoice-Simulator (callscope)",
        )
    except (OSError, InvalidHandshake, TimeoutError, InvalidURI, websockets.InvalidProxy) as exc:
        outcome.connect_error = describe_connect_error(exc, plan.stream_url, options.open_timeout_s)
        outcome.record("connect", False, outcome.connect_error)
        return
    outcome.connected = True
    outcome.record("connect", True, f"WebSocket connected to {redact_url(plan.stream_url)} (HTTP 101)")
    drain = asyncio.create_task(_drain(ws))
    try:
        await _play(ws, plan, outcome)
    finally:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        # Whatever happened, release the socket; after abort() this is immediate.
        if ws.transport is not None and not ws.transport.is_closing():
            ws.transport.abort()


async def _drain(ws: ClientConnection) -> None:
    """Read what the receiver sends, so its frames (and its close) are processed promptly."""
    with contextlib.suppress(ConnectionClosed):
        async for _message in ws:
            pass


async def _play(ws: ClientConnection, plan: StreamPlan, outcome: CallOutcome) -> None:
    tracks = TRACKS_FOR.get(plan.track, ("inbound",))
    stream_id = "str_" + uuid.uuid4().hex[:12]
    sequence = 1
    try:
        await ws.send(connected_message())
        await ws.send(start_message(sequence, plan.call_id, stream_id, tracks))
        outcome.record("media", True, f"sent connected and start ({stream_id}, tracks {'+'.join(tracks)})")
        if plan.send_media:
            sequence = await _send_frames(ws, plan, outcome, tracks, sequence)
            if outcome.closed_by == "network":
                return
            outcome.record("media", True, f"sent {outcome.media_frames_sent} media frames")
        else:
            await _sleep_scaled(plan.media_seconds, plan.speed)
            outcome.record("media", True, "sent no media (silence for the whole call)")
        await ws.send(stop_message(sequence + 1, plan.call_id, plan.stop_reason))
        outcome.stop_sent = True
        await ws.close(1000, "call ended")
        received = ws.protocol.close_rcvd
        if ws.protocol.close_rcvd_then_sent and received is not None:
            # The receiver's close crossed our stop: it closed first.
            _closed(outcome, received.code, received.reason, "receiver")
            outcome.record("stream", received.code == 1000, f"receiver closed with {received.code}")
            return
        _closed(outcome, 1000, "call ended", "platform")
        outcome.record("stream", True, f"sent stop ({plan.stop_reason}) and closed with 1000")
    except ConnectionClosed as exc:
        _record_closed(exc, outcome)


async def _send_frames(
    ws: ClientConnection, plan: StreamPlan, outcome: CallOutcome, tracks: tuple[str, ...], sequence: int
) -> int:
    frames = round(plan.media_seconds * FRAMES_PER_SECOND)
    payloads = tone_payloads()
    interval = FRAME_MS / 1000 / plan.speed if plan.speed > 0 else math.inf
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index in range(frames):
        if plan.drop_after_frames is not None and index >= plan.drop_after_frames:
            _cut(ws, outcome)
            return sequence
        payload = payloads[index % len(payloads)]
        for track in tracks:
            sequence += 1
            await ws.send(media_message(sequence, track, index + 1, index * FRAME_MS, payload))
            outcome.media_frames_sent += 1
        if math.isfinite(interval) and interval > 0:
            delay = started + (index + 1) * interval - loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
        elif index % 10 == 9:
            await asyncio.sleep(0)  # unpaced: still let other calls (and the receiver's close) through
    return sequence


def _cut(ws: ClientConnection, outcome: CallOutcome) -> None:
    """The network fault: the TCP connection ends with no WebSocket close frame."""
    assert ws.transport is not None
    ws.transport.abort()
    _closed(outcome, CLOSE_ABNORMAL, None, "network")
    frames = outcome.media_frames_sent
    outcome.record("stream", False, f"network dropped the connection after {frames} frames (no close frame)")


def _closed(outcome: CallOutcome, code: int, reason: str | None, closed_by: str) -> None:
    outcome.close_code, outcome.close_reason, outcome.closed_by = code, reason, closed_by


def _record_closed(exc: ConnectionClosed, outcome: CallOutcome) -> None:
    if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
        _closed(outcome, exc.rcvd.code, exc.rcvd.reason, "receiver")
        outcome.record(
            "stream",
            exc.rcvd.code == 1000 and outcome.stop_sent,
            f"receiver closed the stream with {exc.rcvd.code}"
            + (f" ({exc.rcvd.reason})" if exc.rcvd.reason else "")
            + f" after {outcome.media_frames_sent} frames",
        )
    elif exc.sent is not None and exc.rcvd is not None:
        _closed(outcome, exc.sent.code, exc.sent.reason, "platform")
        outcome.record("stream", True, f"closed with {exc.sent.code}")
    else:
        _closed(outcome, CLOSE_ABNORMAL, None, "network")
        outcome.record("stream", False, "connection lost without a close frame (1006)")


async def _sleep_scaled(seconds: float, speed: float) -> None:
    if speed > 0 and math.isfinite(speed):
        await asyncio.sleep(seconds / speed)
