"""OTLP/HTTP trace ingest: `POST /v1/traces` into the write-ahead log, then Parquet segments.

Per the OTLP/HTTP specification:

- `application/x-protobuf` or `application/json` bodies, optionally `Content-Encoding: gzip`; the
  response uses the request's content type.
- 200 with an `ExportTraceServiceResponse`; spans with unusable ids are left out and counted in
  `partial_success` (`rejected_spans`, `error_message`).
- 400 with a `google.rpc.Status` for undecodable bodies, 413 when the body (after decompression) is
  over `max_body_bytes` (a gzip bomb is stopped while inflating), 415 for other content types,
  401 without the bearer token (when one is configured), 408 when the body does not arrive within
  `read_timeout_s` (a slow or stalled client), 429 when too many request bodies are in
  memory and 503 when the write-ahead log is further ahead of the segments than `max_backlog_bytes`,
  both with `Retry-After`.
- `GET /healthz`: 200 with counters as JSON.

A 200 means durable: the accepted request is in the fsync'd write-ahead log (`pipeline.wal`) before
the response is sent, and survives a kill -9 an instant later. Decoding into rows and writing
segments happens off the request path (`pipeline.rollup`); a restart replays what a crash left.

Run it with `callscope ingest`, or in-process with `running_ingest(data_dir)` (tests, the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from pipeline.body import BodyError, BodyReader, BodyTooLarge, UnsupportedEncoding
from pipeline.compaction import CompactionBusyError, clean_staging, compact
from pipeline.otlp import OTLPDecodeError, Validation, parse_protobuf, prune_rejected, validate_request
from pipeline.otlp_json import parse_json
from pipeline.rollup import Roller, replay
from pipeline.settings import Settings
from pipeline.storage import DataDir
from pipeline.wal import WALClosedError, WriteAheadLog

logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
HEALTH_PATH = "/healthz"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MiB = 1024 * 1024

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """How an ingest process behaves. `from_settings` fills it from the environment's Settings."""

    token: str | None = None
    max_body_bytes: int = 16 * MiB
    #: Decompressed request bytes held in memory at once, over all requests; beyond it, 429.
    max_inflight_bytes: int = 256 * MiB
    #: WAL bytes not yet rolled into segments; beyond it, 503 (the disk or decoder can't keep up).
    max_backlog_bytes: int = 512 * MiB
    retry_after_s: int = 1
    #: Seconds a client has to send its request headers, and then its whole body; after either,
    #: 408 and the connection is closed, so slow or stalled clients (slowloris) cannot hold memory
    #: and connections forever.
    read_timeout_s: float = 30.0
    fsync: bool = True
    wal_file_bytes: int = 32 * MiB
    wal_file_age_s: float = 2.0
    #: Worker processes that decode WAL files into segments (0: a thread of the ingest process).
    roll_processes: int = 0
    #: Seconds between attempts to roll a WAL file whose roll-up failed (a full disk, say).
    roll_retry_s: float = 5.0
    #: Seconds between background compactions (pipeline.compaction); 0 turns them off.
    compact_interval_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> IngestOptions:
        """Options from Settings (token, body limit), with explicit overrides."""
        return cls(token=settings.ingest_token, max_body_bytes=settings.max_body_bytes, **overrides)


@dataclass(slots=True)
class IngestStats:
    """Counters shown by /healthz."""

    requests: int = 0
    accepted_spans: int = 0
    rejected_spans: int = 0
    errors: dict[int, int] = field(default_factory=dict)


class IngestService:
    """The write path: WAL append with group commit, background roll-up, crash replay at start."""

    def __init__(self, data: DataDir, options: IngestOptions) -> None:
        self.data = data
        self.options = options
        self.stats = IngestStats()
        self.inflight_bytes = 0
        self._wal: WriteAheadLog | None = None
        self._roller: Roller | None = None
        self._stop = threading.Event()
        self._compactor: threading.Thread | None = None
        self.compactions = 0

    def start(self) -> None:
        """Create the data dir, replay a crashed predecessor's WAL, start the writer threads."""
        self.data.ensure()
        clean_staging(self.data)
        replayed = replay(self.data)
        if replayed:
            logger.info(
                "replayed %d WAL file(s), %d spans, left by an earlier run",
                len(replayed),
                sum(r.spans for r in replayed),
            )
        self.data.refresh_views_if_changed()
        self._roller = Roller(
            self.data, processes=self.options.roll_processes, retry_s=self.options.roll_retry_s
        )
        self._wal = WriteAheadLog(
            self.data.wal_dir,
            on_sealed=self._roller.submit,
            fsync=self.options.fsync,
            max_file_bytes=self.options.wal_file_bytes,
            max_file_age_s=self.options.wal_file_age_s,
        )
        if self.options.compact_interval_s > 0:
            self._compactor = threading.Thread(
                target=self._compact_loop, name="callscope-compact", daemon=True
            )
            self._compactor.start()

    def _compact_loop(self) -> None:
        while not self._stop.wait(self.options.compact_interval_s):
            try:
                compact(self.data)
                self.compactions += 1
            except CompactionBusyError:
                pass  # `callscope compact` is running; next time
            except Exception:  # compaction is an optimisation: never take ingest down for it
                logger.exception("background compaction failed")

    def close(self) -> None:
        """Flush the WAL and roll everything into segments."""
        self._stop.set()
        if self._compactor is not None:
            self._compactor.join()
            self._compactor = None
        if self._wal is not None:
            self._wal.close()
        if self._roller is not None:
            self._roller.close()
        self._wal = None
        self._roller = None

    def backlog_bytes(self) -> int:
        """WAL bytes written or queued but not yet in segments."""
        wal, roller = self._wal, self._roller
        if wal is None or roller is None:
            return 0
        return wal.pending_bytes + wal.active_file_bytes + roller.backlog_bytes

    def saturation(self, incoming: int = 0) -> int | None:
        """429 or 503 if the write path cannot take `incoming` more bytes now, else None."""
        if self.backlog_bytes() > self.options.max_backlog_bytes:
            return 503
        if self.inflight_bytes + incoming > self.options.max_inflight_bytes:
            return 429
        return None

    async def append(self, payload: bytes) -> int:
        """Durably log an accepted request; returns its ingested_at_ns."""
        if self._wal is None:
            raise WALClosedError("ingest is not running")
        return await asyncio.wrap_future(self._wal.append(payload))

    def health(self) -> dict[str, Any]:
        """Counters for /healthz."""
        roller = self._roller
        return {
            "status": "ok",
            "data_dir": str(self.data.path),
            "requests": self.stats.requests,
            "accepted_spans": self.stats.accepted_spans,
            "rejected_spans": self.stats.rejected_spans,
            "errors": {str(k): v for k, v in sorted(self.stats.errors.items())},
            "backlog_bytes": self.backlog_bytes(),
            "inflight_bytes": self.inflight_bytes,
            "rolled_spans": roller.rolled_spans if roller else 0,
            "roll_failures": roller.failures if roller else 0,
            "wal_files_waiting_retry": roller.waiting_retry if roller else 0,
            "wal_fsyncs": self._wal.fsyncs if self._wal else 0,
            "compactions": self.compactions,
        }


class HTTPError(Exception):
    """A request that gets an error status; `message` goes into the google.rpc.Status body."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


_RPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    408: code_pb2.DEADLINE_EXCEEDED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    500: code_pb2.INTERNAL,
    503: code_pb2.UNAVAILABLE,
}


def _media_type(headers: dict[bytes, bytes]) -> str:
    raw = headers.get(b"content-type", b"").decode("latin-1")
    return raw.split(";", 1)[0].strip().lower()


def status_body(status: int, message: str, media_type: str) -> tuple[bytes, str]:
    """A google.rpc.Status body in the request's encoding (JSON unless it was protobuf)."""
    rpc_status = status_pb2.Status(code=_RPC_CODES.get(status, code_pb2.UNKNOWN), message=message)
    if media_type == PROTOBUF:
        return rpc_status.SerializeToString(), PROTOBUF
    return orjson.dumps({"code": rpc_status.code, "message": message}), JSON


def success_body(validation: Validation, media_type: str) -> bytes:
    """An ExportTraceServiceResponse, with partial_success filled when spans were rejected."""
    response = ExportTraceServiceResponse()
    if validation.rejected:
        response.partial_success.rejected_spans = validation.rejected
        response.partial_success.error_message = validation.message()
    if media_type == PROTOBUF:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()


class IngestApp:
    """The ASGI application. All state lives in the IngestService."""

    def __init__(self, service: IngestService) -> None:
        self.service = service
        self.options = service.options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        headers = dict(scope["headers"])
        media_type = _media_type(headers)
        try:
            if path == HEALTH_PATH:
                if method not in ("GET", "HEAD"):
                    raise HTTPError(405, "use GET /healthz", headers={"allow": "GET, HEAD"})
                await _respond(send, 200, orjson.dumps(self.service.health()), JSON)
                return
            if path != TRACES_PATH:
                raise HTTPError(404, f"no such endpoint {path!r}; OTLP traces go to POST {TRACES_PATH}")
            if method != "POST":
                raise HTTPError(405, f"use POST {TRACES_PATH}", headers={"allow": "POST"})
            self.service.stats.requests += 1
            self._check_token(headers)
            if media_type not in (PROTOBUF, JSON):
                raise HTTPError(
                    415,
                    f"Content-Type {media_type or '(none)'!r} is not supported; send {PROTOBUF} or {JSON}",
                )
            body, validation = await self._read_and_log(headers, media_type, receive)
            del body
            await _respond(send, 200, success_body(validation, media_type), media_type)
        except HTTPError as error:
            stats = self.service.stats
            stats.errors[error.status] = stats.errors.get(error.status, 0) + 1
            content, content_type = status_body(error.status, error.message, media_type)
            await _respond(send, error.status, content, content_type, error.headers)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _check_token(self, headers: dict[bytes, bytes]) -> None:
        token = self.options.token
        if token is None:
            return
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            reason = "missing" if not given else "wrong"
            raise HTTPError(
                401,
                f"bearer token {reason}: send 'Authorization: Bearer <CALLSCOPE_INGEST_TOKEN>'",
                headers={"www-authenticate": 'Bearer realm="callscope-ingest"'},
            )

    def _retry(self, status: int) -> HTTPError:
        why = (
            "ingest is writing slower than spans arrive (write-ahead log backlog is full)"
            if status == 503
            else "too many requests in flight"
        )
        return HTTPError(
            status, f"{why}; retry later", headers={"retry-after": str(self.options.retry_after_s)}
        )

    async def _read_and_log(
        self, headers: dict[bytes, bytes], media_type: str, receive: Receive
    ) -> tuple[bytes, Validation]:
        service = self.service
        limit = self.options.max_body_bytes
        declared = headers.get(b"content-length")
        encoding = headers.get(b"content-encoding", b"").decode("latin-1")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"body of {int(declared)} bytes is larger than the limit of {limit} bytes")
        status = service.saturation(int(declared) if declared and declared.isdigit() else 0)
        if status is not None:
            raise self._retry(status)
        try:
            reader = BodyReader(limit, encoding)
        except UnsupportedEncoding as exc:
            raise HTTPError(415, str(exc)) from exc
        counted = 0
        try:
            more = True
            try:
                async with asyncio.timeout(self.options.read_timeout_s):
                    while more:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            raise HTTPError(400, "client disconnected before the body was complete")
                        chunk = message.get("body", b"")
                        more = message.get("more_body", False)
                        try:
                            reader.feed(chunk)
                        except BodyTooLarge as exc:
                            raise HTTPError(413, str(exc)) from exc
                        except BodyError as exc:
                            raise HTTPError(400, str(exc)) from exc
                        grown = reader.size - counted
                        if grown:
                            if service.inflight_bytes + grown > self.options.max_inflight_bytes:
                                raise self._retry(429)
                            service.inflight_bytes += grown
                            counted += grown
            except TimeoutError:
                raise HTTPError(
                    408,
                    f"the request body did not arrive within {self.options.read_timeout_s:g} s "
                    f"({reader.received} bytes received)",
                    headers={"connection": "close"},
                ) from None
            try:
                body = reader.finish()
            except BodyError as exc:
                raise HTTPError(400, str(exc)) from exc
            payload, validation = await self._decode(body, media_type)
            if payload:
                try:
                    await service.append(payload)
                except WALClosedError as exc:
                    raise HTTPError(503, str(exc), headers={"retry-after": "1"}) from exc
                except OSError as exc:
                    raise HTTPError(503, f"could not write the write-ahead log: {exc}") from exc
            service.stats.accepted_spans += validation.accepted
            service.stats.rejected_spans += validation.rejected
            return body, validation
        finally:
            service.inflight_bytes -= counted

    async def _decode(self, body: bytes, media_type: str) -> tuple[bytes, Validation]:
        """(protobuf payload to log, or b"" if nothing is accepted; validation)."""
        try:
            if media_type == PROTOBUF:
                request = parse_protobuf(body)
                validation = validate_request(request, body)  # counted by the C decoder
                if validation.rejected:
                    prune_rejected(request)
                    payload = request.SerializeToString()
                else:
                    payload = body  # the common case: log the bytes as received
            else:
                # JSON goes through protobuf's pure-Python parser: off the event loop.
                json_request, validation = await asyncio.to_thread(parse_json, body)
                payload = json_request.SerializeToString()
        except OTLPDecodeError as exc:
            raise HTTPError(400, str(exc)) from exc
        return (payload if validation.accepted else b""), validation


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> None:
    raw_headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


# ---- running it ------------------------------------------------------------------------------


class RunningIngest:
    """A live ingest: its URLs and service. Made by `running_ingest` or `serve`."""

    def __init__(self, service: IngestService, host: str, port: int) -> None:
        self.service = service
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:4318."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def traces_url(self) -> str:
        """The OTLP traces endpoint, `<url>/v1/traces`."""
        return self.url + TRACES_PATH

    @property
    def data(self) -> DataDir:
        """The data directory being written."""
        return self.service.data


def _uvicorn_config(app: IngestApp, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    from pipeline.http_timeouts import header_timeout_protocol

    stats = app.service.stats

    def header_timeout() -> None:
        stats.errors[408] = stats.errors.get(408, 0) + 1

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # An OTLP client sends one body per request; cap what h11/httptools buffer before our limit.
        h11_max_incomplete_event_size=64 * 1024,
        # Slow or stalled request headers get the body's deadline too (408): uvicorn has none.
        http=header_timeout_protocol(app.service.options.read_timeout_s, on_timeout=header_timeout),
    )


def _foreground_server_class() -> type:
    import uvicorn

    class ForegroundServer(uvicorn.Server):
        """uvicorn's server, except that SIGINT/SIGTERM are not re-raised after the shutdown.

        uvicorn re-raises the signal once it has stopped, which would kill the process before
        `serve` flushes the write-ahead log into segments.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return ForegroundServer


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port), as uvicorn would make it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def running_ingest(
    data_dir: str | os.PathLike[str] | DataDir,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    **options: Any,
) -> Iterator[RunningIngest]:
    """Run ingest on uvicorn in a background thread; yields once it accepts connections.

    `options` are IngestOptions fields (e.g. token="s3cret", max_body_bytes=1024, fsync=False).
    On exit the server stops, the WAL is flushed and rolled into segments.
    """
    import uvicorn

    data = data_dir if isinstance(data_dir, DataDir) else DataDir(data_dir)
    service = IngestService(data, IngestOptions(**options))
    # Bind first: a busy port then fails before any thread or file exists. Everything started
    # after this point is undone by the `finally` below.
    sock = bind_socket(host, port)
    server = uvicorn.Server(_uvicorn_config(IngestApp(service), host, port, log_level))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="callscope-ingest", daemon=True)
    try:
        service.start()
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"ingest did not start on {host}:{port}: {failure[:1] or 'exited'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not start on {host}:{port} within 30 s")
            time.sleep(0.01)
        yield RunningIngest(service, host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join(timeout=30)
        sock.close()
        service.close()


def serve(
    data_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 4318,
    log_level: str = "info",
    ready: Callable[[RunningIngest], None] | None = None,
    **options: Any,
) -> None:
    """Run ingest in the foreground until SIGINT/SIGTERM; then flush and roll the WAL.

    `ready` is called once the socket is bound (with the real port when `port` is 0).
    """
    service = IngestService(DataDir(data_dir), IngestOptions(**options))
    service.start()
    try:
        with bind_socket(host, port) as sock:
            if ready is not None:
                ready(RunningIngest(service, host, sock.getsockname()[1]))
            server = _foreground_server_class()(_uvicorn_config(IngestApp(service), host, port, log_level))
            server.run(sockets=[sock])
    finally:
        service.close()
