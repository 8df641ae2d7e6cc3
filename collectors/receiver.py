"""The stream receiver collector: one `stream.receiver` span per WebSocket connection.

Two integrations, one session object behind them:

- `instrument_receiver(handler)` wraps a `websockets` (asyncio API) connection handler. The
  handler gets the same connection behind a thin proxy whose `recv()`, `async for` and
  `recv_streaming()` count each message on its way to the handler; everything else is the real
  connection's.
- `ReceiverMiddleware(app, path=...)` wraps an ASGI app (Starlette, FastAPI) and observes the
  WebSocket messages of connections to `path` as they pass through `receive` and `send`.

Per message the collector only counts (`collectors.media.StreamStats`): no span, event or log
line per media frame, payloads never recorded. What happens at the connection's few notable
moments (open, the `connected`/`start`/`stop` messages, the first media frame, errors, the close)
becomes a span event and a JSON log line on `callscope.receiver`, at the moment it happens.

The span belongs to the call's trace (docs/spans.md), whose id is derived from the call id, and
MiniVoice sends the call id only in the `start` message. So the span is started when `start`
arrives (or, without one, when the connection closes), with the connection's open time as its
start time; events seen before are added with their own earlier timestamps. The call id falls
back to the `call_id` query parameter; with neither, the span starts its own trace, carries no
`minivoice.call_id`, and `receiver_connections_without_call_id` is counted in `collectors.stats()`.

Log lines on `callscope.receiver` (one JSON object each, see docs/spans.md "Receiver log lines"):

- lifecycle lines, `"record": "lifecycle"`, written as things happen: `open`, `connected`,
  `start`, `first_media`, `stop`, `error`, `close` (with the close code, `closed_by` and totals);
- then the finished span, in the span-line format of `collectors.logs` (what `callscope backfill
  --receiver` reads; it skips the lifecycle lines).

Everything the collector does runs under `collectors.counters.guard`: a bug here is counted and
never reaches the handler. The handler's own exceptions are recorded (`error` event,
`error.type=handler_exception`) and re-raised unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast, overload
from urllib.parse import parse_qsl

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from collectors import counters, logs, privacy
from collectors.media import DEFAULT_MAX_MESSAGE_CHARS, AttributeValue, Notice, StreamStats
from collectors.tracing import Clock, TracerSource, start_call_span

SOURCE = "receiver"
SPAN_NAME = "stream.receiver"
CALL_ID_QUERY = "call_id"
CONNECTIONS_WITHOUT_CALL_ID = "receiver_connections_without_call_id"
"""`collectors.stats()` key: receiver connections that never told a call id (span in its own trace)."""

CLOSED_BY_RECEIVER = "receiver"
CLOSED_BY_PLATFORM = "platform"
CLOSED_BY_NETWORK = "network"
ABNORMAL_CLOSURE = 1006
NO_STATUS = 1005
NORMAL_CLOSURE = 1000

_logger = logs.logger_for(SOURCE)

Handler = Callable[[Any], Awaitable[None]]
"""A `websockets` connection handler. The instrumented one receives an `InstrumentedConnection`;
`Any` lets handlers annotated either way pass type checks, and lets `serve()` accept the result."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a connection ended: the close code and reason of the close frame that started the
    closing handshake, and who sent it (`receiver`, `platform`, or `network` when no close
    frame arrived: code 1006). `code` is None when it could not be known."""

    closed_by: str
    code: int | None = None
    reason: str | None = None


def _iso(at_ns: int) -> str:
    return datetime.fromtimestamp(at_ns / 1e9, tz=UTC).isoformat(timespec="microseconds")


def _query_call_id(query_string: str) -> str | None:
    for name, value in parse_qsl(query_string, keep_blank_values=False):
        if name == CALL_ID_QUERY and value:
            return value
    return None


class ReceiverSession:
    """One WebSocket connection as the collector sees it: counters, span, log lines.

    The integrations create one per connection and call `notice`, `record_exception` and
    `finish`; `stats` is readable at any time (the reference receiver prints it periodically).
    """

    def __init__(
        self,
        tracer_source: TracerSource,
        *,
        path: str,
        query_string: str = "",
        client_address: str | None = None,
        connection_id: str | None = None,
        clock: Clock | None = None,
        max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
    ) -> None:
        self._tracer_source = tracer_source
        self.clock: Clock = clock if clock is not None else time.time_ns
        self.opened_at_ns = self.clock()
        self.connection_id = connection_id or uuid.uuid4().hex
        self.stats = StreamStats(clock=self.clock, max_message_chars=max_message_chars)
        self.query_call_id = _query_call_id(query_string)
        self.call_id: str | None = None
        self.call_id_source: str | None = None
        self.span: Span | None = None
        self.close: CloseInfo | None = None
        self.finished = False
        self._pending: list[Notice] = []
        self._request_attributes: dict[str, AttributeValue] = {"url.path": path}
        if query_string:
            self._request_attributes["url.query"] = privacy.redact_query(query_string)
        if client_address:
            self._request_attributes["client.address"] = client_address
        self._request_attributes["minivoice.connection_id"] = self.connection_id
        opened: dict[str, AttributeValue] = dict(self._request_attributes)
        if self.query_call_id:
            opened["minivoice.call_id"] = self.query_call_id
        self._log("open", self.opened_at_ns, opened)

    # -- what happened --------------------------------------------------------------------------

    def notice(self, notice: Notice) -> None:
        """Record one notable moment reported by `StreamStats` (span event and log line)."""
        with counters.guard("receiver.notice"):
            if notice.event == "start" and self.span is None:
                self._start_span()
            if self.span is None:
                self._pending.append(notice)
            else:
                self.span.add_event(notice.event, notice.attributes, timestamp=notice.at_ns)
            self._log(notice.event, notice.at_ns, notice.attributes)

    def record_exception(self, exc: BaseException) -> None:
        """Record an exception the handler raised (it is re-raised by the integration)."""
        with counters.guard("receiver.record_exception"):
            text = str(exc)
            message = f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
            notice = self.stats.record_error("handler_exception", message)
            if notice is not None:
                self.notice(notice)

    def finish(self, close: CloseInfo) -> None:
        """End the span (once) with the close information and the connection's totals."""
        if self.finished:
            return
        self.finished = True
        with counters.guard("receiver.finish"):
            ended_at = self.clock()
            self.close = close
            if self.span is None:
                self._start_span()
            span = self.span
            assert span is not None
            attributes = self.stats.attributes()
            attributes["minivoice.closed_by"] = close.closed_by
            if close.code is not None:
                attributes["minivoice.close.code"] = close.code
            if close.reason:
                attributes["minivoice.close.reason"] = close.reason[:200]
            span.set_attributes(attributes)
            problem = self.problem()
            if problem is None:
                span.set_status(Status(StatusCode.OK))
            else:
                span.set_status(Status(StatusCode.ERROR, problem))
            span.end(end_time=ended_at)
            self._log("close", ended_at, self._close_summary(close, ended_at))
            logs.log_span(span, SOURCE)

    def problem(self) -> str | None:
        """Why the span's status is ERROR, or None when the stream ended normally.

        Normal means: no error recorded, a `stop` message arrived, and the close code was 1000.
        """
        stats, close = self.stats, self.close
        reasons = []
        if stats.errors:
            reasons.append(f"{stats.errors} error(s): {', '.join(stats.error_types)}")
        if stats.stopped_at_ns is None:
            reasons.append("no stop message")
        if close is not None and close.code != NORMAL_CLOSURE:
            code = "no close frame" if close.code is None else f"close {close.code}"
            reasons.append(f"{code} by {close.closed_by}")
        return "; ".join(reasons) if reasons else None

    # -- the span ---------------------------------------------------------------------------------

    def _start_span(self) -> None:
        if self.stats.call_id:
            self.call_id, self.call_id_source = self.stats.call_id, "start"
        elif self.query_call_id:
            self.call_id, self.call_id_source = self.query_call_id, "query"
        else:
            counters.count(CONNECTIONS_WITHOUT_CALL_ID)
        attributes: dict[str, AttributeValue] = dict(self._request_attributes)
        if self.call_id_source:
            attributes["minivoice.call_id_source"] = self.call_id_source
        self.span = start_call_span(
            self._tracer_source.tracer(),
            SPAN_NAME,
            self.call_id,
            SOURCE,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=self.opened_at_ns,
        )
        for pending in self._pending:
            self.span.add_event(pending.event, pending.attributes, timestamp=pending.at_ns)
        self._pending.clear()

    # -- log lines --------------------------------------------------------------------------------

    def _close_summary(self, close: CloseInfo, ended_at: int) -> dict[str, AttributeValue]:
        stats = self.stats
        summary: dict[str, AttributeValue] = {
            "minivoice.closed_by": close.closed_by,
            "minivoice.media.frames": stats.frames,
            "minivoice.media.bytes": stats.bytes,
            "minivoice.media.sequence_gaps": stats.sequence_gaps,
            "minivoice.media.gap_max_ms": stats.gap_max_ms,
            "minivoice.errors": stats.errors,
            "duration_ms": round((ended_at - self.opened_at_ns) / 1e6, 3),
        }
        if close.code is not None:
            summary["minivoice.close.code"] = close.code
        if close.reason:
            summary["minivoice.close.reason"] = close.reason[:200]
        if stats.stop_reason is not None:
            summary["minivoice.stop.reason"] = stats.stop_reason
        return summary

    def _log(self, event: str, at_ns: int, attributes: dict[str, AttributeValue]) -> None:
        with counters.guard("receiver.log"):
            if not _logger.isEnabledFor(logging.INFO):
                return
            call_id = self.call_id or self.stats.call_id or self.query_call_id
            line = {
                "v": logs.FORMAT_VERSION,
                "record": "lifecycle",
                "time": _iso(at_ns),
                "time_ns": at_ns,
                "source": SOURCE,
                "event": event,
                "connection_id": self.connection_id,
                "call_id": call_id,
                "attributes": attributes,
            }
            _logger.info(json.dumps(line, separators=(",", ":"), ensure_ascii=False, default=str))
            counters.count(counters.LOG_LINES)


def _open_session(
    tracer_source: TracerSource,
    clock: Clock | None,
    max_message_chars: int,
    *,
    path: str,
    query_string: str,
    client_address: str | None,
    connection_id: str | None,
) -> ReceiverSession | None:
    with counters.guard("receiver.open"):
        return ReceiverSession(
            tracer_source,
            path=path,
            query_string=query_string,
            client_address=client_address,
            connection_id=connection_id,
            clock=clock,
            max_message_chars=max_message_chars,
        )
    return None


# -- websockets -------------------------------------------------------------------------------------


class InstrumentedConnection:
    """A `websockets` server connection whose received messages are counted.

    Behaves as the connection it wraps (attribute access is forwarded), except that it is not an
    instance of `ServerConnection`. `session` is the collector's view of the connection.
    """

    __slots__ = ("_observe", "connection", "session")

    def __init__(self, connection: Any, session: ReceiverSession) -> None:
        self.connection = connection
        self.session = session
        self._observe = session.stats.observe

    async def recv(self, decode: bool | None = None) -> str | bytes:
        """`connection.recv()`, counting the message."""
        message = await self.connection.recv(decode)
        # With decode=False a text frame arrives as bytes: read it as text, not as a binary frame.
        notice = self._observe(message) if decode is not False else self._observe_undecoded(message)
        if notice is not None:
            self.session.notice(notice)
        return cast(str | bytes, message)

    async def recv_json(self) -> Any:
        """The next message, parsed: `json.loads(await connection.recv())`, parsed once for both
        the app and the collector, which counts from the parsed message (the cheapest way to be
        counted). A message that is not JSON is recorded, then `json.loads`' error is raised."""
        return self._parse(await self.connection.recv())

    async def iter_json(self) -> AsyncIterator[Any]:
        """`recv_json()` until the connection closes normally (as `async for` does for `recv()`)."""
        from websockets.exceptions import ConnectionClosedOK

        # The connection's recv() directly, not through ours: no extra coroutine per frame; and
        # `_parse` inlined for the common message (a text frame within the limit).
        receive, session, loads = self.connection.recv, self.session, json.loads
        observe_message, limit = session.stats.observe_message, session.stats.max_message_chars
        try:
            while True:
                message = await receive()
                if type(message) is not str or len(message) > limit:
                    yield self._parse(message)
                    continue
                try:
                    document = loads(message)
                except (ValueError, RecursionError):
                    self._notify(self._observe(message))  # records invalid_json
                    raise
                notice = observe_message(document)
                if notice is not None:
                    session.notice(notice)
                yield document
        except ConnectionClosedOK:
            return

    def _parse(self, message: Any) -> Any:
        stats = self.session.stats
        if type(message) is str and len(message) <= stats.max_message_chars:
            try:
                document = json.loads(message)
            except (ValueError, RecursionError):
                self._notify(self._observe(message))  # records invalid_json
                raise
            notice = stats.observe_message(document)
            if notice is not None:
                self.session.notice(notice)
            return document
        self._notify(self._observe(message))  # binary_frame or frame_too_large
        return json.loads(message)  # whatever json.loads makes of it, as the app would get

    def _notify(self, notice: Notice | None) -> None:
        if notice is not None:
            self.session.notice(notice)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        # The same contract as websockets' own __aiter__ (stop quietly on a normal close), and
        # like it a loop over the connection's recv(): no extra coroutine per frame.
        from websockets.exceptions import ConnectionClosedOK

        receive, observe, session = self.connection.recv, self._observe, self.session
        try:
            while True:
                message = await receive()
                notice = observe(message)
                if notice is not None:
                    session.notice(notice)
                yield message
        except ConnectionClosedOK:
            return

    async def recv_streaming(self, decode: bool | None = None) -> AsyncIterator[str | bytes]:
        """`connection.recv_streaming()`; the fragments are joined (up to the size limit) and
        counted as one message once the last one has arrived."""
        limit = self.session.stats.max_message_chars
        fragments: list[Any] = []
        size = 0
        async for fragment in self.connection.recv_streaming(decode):
            size += len(fragment)
            if size <= limit:
                fragments.append(fragment)
            yield fragment
        with counters.guard("receiver.recv_streaming"):
            if size > limit:
                notice = self.session.stats.record_error(
                    "frame_too_large", f"streamed message of {size} characters, over the {limit} limit"
                )
                self.session.stats.messages += 1
            elif fragments and isinstance(fragments[0], str):
                notice = self._observe("".join(fragments))
            else:
                joined = b"".join(fragments)
                notice = self._observe(joined) if decode is not False else self._observe_undecoded(joined)
            if notice is not None:
                self.session.notice(notice)

    def _observe_undecoded(self, message: object) -> Notice | None:
        if isinstance(message, bytes):
            try:
                return self._observe(message.decode("utf-8"))
            except UnicodeDecodeError:
                pass
        return self._observe(message)

    async def __aenter__(self) -> InstrumentedConnection:
        # Special methods are looked up on the type, not through __getattr__: forward them.
        await self.connection.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.connection.__aexit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        if name in InstrumentedConnection.__slots__:  # not set yet: no recursion through ourselves
            raise AttributeError(name)
        return getattr(self.connection, name)

    def __repr__(self) -> str:
        return f"InstrumentedConnection({self.connection!r})"


def websockets_close_info(connection: Any) -> CloseInfo | None:
    """Who closed a `websockets` connection and with what code, from its closing handshake.

    None while the connection is not closed yet. The code and reason are those of the close
    frame that started the handshake: ours when the receiver closed first, MiniVoice's when it did.
    """
    from websockets.protocol import State

    protocol = connection.protocol
    if protocol.state is not State.CLOSED:
        return None
    received, sent = protocol.close_rcvd, protocol.close_sent
    if received is None and sent is None:
        return CloseInfo(CLOSED_BY_NETWORK, ABNORMAL_CLOSURE)
    if sent is None or (received is not None and protocol.close_rcvd_then_sent):
        assert received is not None
        return CloseInfo(CLOSED_BY_PLATFORM, received.code, received.reason)
    return CloseInfo(CLOSED_BY_RECEIVER, sent.code, sent.reason)


def _finish_websockets(session: ReceiverSession, connection: Any) -> None:
    """Finish now if the connection is closed, else as soon as it is.

    A handler that returns (or raises) leaves the connection open; the server then closes it
    (1000, or 1011 after an exception). The collector waits for that close instead of closing
    itself, so a handler called from another handler keeps its connection.
    """
    with counters.guard("receiver.finish_websockets"):
        close = websockets_close_info(connection)
        if close is not None:
            session.finish(close)
            return
        task = asyncio.get_running_loop().create_task(_finish_when_closed(session, connection))
        _closing.add(task)
        task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


async def _finish_when_closed(session: ReceiverSession, connection: Any) -> None:
    try:
        await connection.wait_closed()
    finally:
        # Also on cancellation (event loop shutting down): the span is ended with what is known.
        with counters.guard("receiver.finish_when_closed"):
            close = websockets_close_info(connection) or CloseInfo(CLOSED_BY_RECEIVER)
            session.finish(close)


def _websockets_request(connection: Any) -> tuple[str, str, str | None, str | None]:
    request = getattr(connection, "request", None)
    target = str(getattr(request, "path", "") or "/")
    path, _, query = target.partition("?")
    remote = getattr(connection, "remote_address", None)
    client = str(remote[0]) if isinstance(remote, tuple) and remote else None
    connection_id = getattr(connection, "id", None)
    return path, query, client, (str(connection_id) if connection_id is not None else None)


@overload
def instrument_receiver(
    handler: Handler,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    clock: Clock | None = None,
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
) -> Handler: ...


@overload
def instrument_receiver(
    handler: None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    clock: Clock | None = None,
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
) -> Callable[[Handler], Handler]: ...


def instrument_receiver(
    handler: Handler | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    clock: Clock | None = None,
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
) -> Handler | Callable[[Handler], Handler]:
    """Wrap a `websockets` connection handler: one `stream.receiver` span per connection.

    Use it as `serve(instrument_receiver(handler), ...)` or as a decorator, with or without
    arguments. `tracer_provider` defaults to callscope's (`collectors.configure()`); `clock`
    (unix ns) is for tests and skewed-clock simulations; messages longer than
    `max_message_chars` are counted as `frame_too_large`, not parsed.

    The handler receives an `InstrumentedConnection`. Its exceptions are recorded and re-raised
    unchanged; a failure of the collector itself is counted, never raised.
    """

    def decorate(handler: Handler) -> Handler:
        from websockets.exceptions import ConnectionClosed

        tracer_source = TracerSource(SOURCE, tracer_provider)

        @functools.wraps(handler)
        async def instrumented(connection: Any) -> None:
            path, query, client, connection_id = "/", "", None, None
            with counters.guard("receiver.request"):
                path, query, client, connection_id = _websockets_request(connection)
            session = _open_session(
                tracer_source,
                clock,
                max_message_chars,
                path=path,
                query_string=query,
                client_address=client,
                connection_id=connection_id,
            )
            if session is None:
                await handler(connection)
                return
            try:
                await handler(InstrumentedConnection(connection, session))
            except ConnectionClosed:
                # The connection's own end escaping the handler: the close says it all.
                raise
            except Exception as exc:
                session.record_exception(exc)
                raise
            finally:
                _finish_websockets(session, connection)

        return instrumented

    return decorate(handler) if handler is not None else decorate


# -- ASGI (Starlette, FastAPI) -------------------------------------------------------------------


def _disconnect_exceptions() -> tuple[type[BaseException], ...]:
    try:
        from starlette.websockets import WebSocketDisconnect
    except ImportError:  # not a Starlette app: nothing of that kind can be raised
        return ()
    return (WebSocketDisconnect,)


class _AsgiClose:
    """The close as seen in ASGI messages: whoever's close came first."""

    __slots__ = ("close",)

    def __init__(self) -> None:
        self.close: CloseInfo | None = None

    def app_closed(self, message: Any) -> None:
        if self.close is None:
            code = message.get("code")
            reason = message.get("reason")
            self.close = CloseInfo(
                CLOSED_BY_RECEIVER,
                code if isinstance(code, int) else NORMAL_CLOSURE,
                reason if isinstance(reason, str) else None,
            )

    def disconnected(self, message: Any) -> None:
        if self.close is None:
            code = message.get("code")
            reason = message.get("reason")
            # ASGI servers report a dropped TCP connection as 1006 (uvicorn's sans-I/O
            # implementation says 1005): no close frame either way.
            if code in (ABNORMAL_CLOSURE, NO_STATUS) or not isinstance(code, int):
                self.close = CloseInfo(CLOSED_BY_NETWORK, ABNORMAL_CLOSURE)
            else:
                self.close = CloseInfo(CLOSED_BY_PLATFORM, code, reason if isinstance(reason, str) else None)


class ReceiverMiddleware:
    """ASGI middleware: one `stream.receiver` span per WebSocket connection to `path`.

    `path=None` instruments every WebSocket connection. Works with Starlette and FastAPI
    (`app.add_middleware(ReceiverMiddleware, path="/media")`) and any ASGI app. HTTP requests
    and other paths pass through untouched.

    When the app returns without closing, the server ends the connection (uvicorn drops it
    without a close frame): `closed_by` is `receiver` and the close code is absent.
    """

    def __init__(
        self,
        app: Any,
        path: str | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Clock | None = None,
        max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
    ) -> None:
        self.app = app
        self.path = path
        self.clock = clock
        self.max_message_chars = max_message_chars
        self._tracer_source = TracerSource(SOURCE, tracer_provider)
        self._disconnects = _disconnect_exceptions()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "websocket" or (self.path is not None and scope.get("path") != self.path):
            await self.app(scope, receive, send)
            return
        session = None
        with counters.guard("receiver.asgi_request"):
            client = scope.get("client")
            session = _open_session(
                self._tracer_source,
                self.clock,
                self.max_message_chars,
                path=str(scope.get("path") or "/"),
                query_string=bytes(scope.get("query_string") or b"").decode("latin-1"),
                client_address=str(client[0]) if client else None,
                connection_id=None,
            )
        if session is None:
            await self.app(scope, receive, send)
            return

        observe = session.stats.observe
        close = _AsgiClose()

        async def observed_receive() -> Any:
            message = await receive()
            kind = message.get("type")
            if kind == "websocket.receive":
                text = message.get("text")
                notice = observe(text if text is not None else message.get("bytes"))
                if notice is not None:
                    session.notice(notice)
            elif kind == "websocket.disconnect":
                with counters.guard("receiver.asgi_disconnect"):
                    close.disconnected(message)
            return message

        accepted = False

        async def observed_send(message: Any) -> None:
            nonlocal accepted
            kind = message.get("type")
            if kind == "websocket.accept":
                accepted = True
            elif kind == "websocket.close":
                with counters.guard("receiver.asgi_close"):
                    if not accepted and close.close is None:
                        # Closing before accepting refuses the handshake (HTTP 403): say so.
                        notice = session.stats.record_error(
                            "handshake_rejected", "the app closed the WebSocket before accepting it"
                        )
                        if notice is not None:
                            session.notice(notice)
                    close.app_closed(message)
            await send(message)

        try:
            await self.app(scope, observed_receive, observed_send)
        except self._disconnects:
            raise
        except Exception as exc:
            session.record_exception(exc)
            raise
        finally:
            session.finish(close.close or CloseInfo(CLOSED_BY_RECEIVER))
