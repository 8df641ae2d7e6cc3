"""The answer_url collector: one `answer_url` span per request, as docs/spans.md describes.

`AnswerUrlMiddleware` (ASGI: Starlette, FastAPI) and `AnswerUrlWSGIMiddleware` (Flask) observe
the request MiniVoice sends and the actions the app answers with. They never change the
response: the request body is read once (bounded) and replayed to the app; the response is
recorded by watching it go past, chunk by chunk, so streaming responses keep streaming.

Bounds (a collector must not buffer what a hostile or broken peer sends):

- request body: the first `max_body_bytes` (default 1 MiB) are read ahead for the call id and
  replayed; a longer body is still passed to the app in full, but the call id then comes from the
  header or query only.
- response body: the first 4 KiB are recorded (redacted); the first `max_body_bytes` are kept for
  validation. A longer response is not validated: `minivoice.answer_url.validation_skipped` is
  `too_large`, `minivoice.action.valid` is absent, and `answer_url_body_over_limit` is counted.

The span is built after the response ends, with explicit start and end times, so nothing is
held open while the app works, and all the collector's own work runs under `guard`: a bug here
is counted in `collectors.stats()` and never reaches the app.

Cost (docs/benchmarks.md, "Collector overhead"): before the response's last byte is sent, the
ASGI middleware only reads the request body ahead and watches the response go past; decoding the
headers, finding the call id, validating and redacting the actions, hashing the phone numbers,
the span and the log line all run after it (the span's end time is taken when the last byte has
been sent), so they are off the request's latency, though still on the event loop.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from collectors import counters, logs, privacy
from collectors.actions import check_actions
from collectors.tracing import Clock, TracerSource, now_ns, start_call_span

SOURCE = "answer_url"
SPAN_NAME = "answer_url"
CALL_ID_HEADER = "x-minivoice-call-id"
CALL_ID_QUERY = "call_id"
RECORDED_BODY_BYTES = 4096
"""Response bytes recorded in `minivoice.answer_url.response_body`."""
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Request bytes read ahead for the call id, and response bytes kept for validation."""


@dataclass(slots=True)
class AnswerUrlRequest:
    """What the collector saw of the request; handed to a custom call-id extractor."""

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes  # at most max_body_bytes
    body_complete: bool
    scheme: str = "http"
    client_address: str | None = None
    server_address: str | None = None
    server_port: int | None = None
    _document: object = field(default=None, repr=False)
    _parsed: bool = field(default=False, repr=False)

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (last value wins)."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def json(self) -> object:
        """The body parsed as JSON, or None when it is absent, cut at the bound, or not JSON."""
        if not self._parsed:
            self._parsed = True
            if self.body and self.body_complete:
                try:
                    self._document = json.loads(self.body)
                except (ValueError, RecursionError):
                    self._document = None
        return self._document


CallIdExtractor = Callable[[AnswerUrlRequest], str | None]
"""A custom call-id extractor: return the call id, or None to fall back to body/header/query."""


@dataclass(slots=True)
class AnswerUrlResponse:
    """What the collector saw of the response."""

    status_code: int | None = None
    content_type: str = ""
    content_encoding: str = ""
    body: bytearray = field(default_factory=bytearray)  # at most max_body_bytes
    size: int = 0
    complete: bool = False
    raw_headers: Any = None  # ASGI: the response's headers as sent, decoded after the response

    def decode_headers(self) -> None:
        """Fill `content_type` and `content_encoding` from the ASGI headers seen (once)."""
        raw, self.raw_headers = self.raw_headers, None
        for name, value in raw or ():
            lowered = bytes(name).lower()
            if lowered == b"content-type":
                self.content_type = bytes(value).decode("latin-1")
            elif lowered == b"content-encoding":
                self.content_encoding = bytes(value).decode("latin-1")


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def default_call_id(request: AnswerUrlRequest) -> tuple[str | None, str | None]:
    """The call id and where it came from: JSON body `call.id`, then the `X-MiniVoice-Call-Id`
    header, then the `call_id` query parameter."""
    document = request.json
    if isinstance(document, Mapping):
        call = document.get("call")
        if isinstance(call, Mapping) and (found := _text(call.get("id"))):
            return found, "body"
    if found := request.headers.get(CALL_ID_HEADER, "").strip():
        return found, "header"
    if found := request.query.get(CALL_ID_QUERY, "").strip():
        return found, "query"
    return None, None


def extract_call_id(
    request: AnswerUrlRequest, custom: CallIdExtractor | None = None
) -> tuple[str | None, str | None]:
    """A custom extractor first (if given; a failing one is counted and skipped), then the default."""
    if custom is not None:
        with counters.guard("answer_url.call_id_extractor"):
            found = custom(request)
            if found:
                return str(found), "custom"
    return default_call_id(request)


def _decoded_body(response: AnswerUrlResponse, limit: int) -> bytes:
    body = bytes(response.body)
    encoding = response.content_encoding.lower() if response.content_encoding else ""
    if encoding in ("gzip", "deflate"):
        try:
            decompressor = zlib.decompressobj(47 if encoding == "gzip" else 15)
            return decompressor.decompress(body, limit)
        except zlib.error:
            return body
    return body


def _request_attributes(request: AnswerUrlRequest, key: bytes | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": request.method,
        "url.path": request.path,
        "url.scheme": request.scheme,
    }
    if request.query_string:
        attributes["url.query"] = privacy.redact_query(request.query_string)
    if agent := request.headers.get("user-agent"):
        attributes["user_agent.original"] = agent[:256]
    if request.server_address:
        attributes["server.address"] = request.server_address
    if request.server_port is not None:
        attributes["server.port"] = request.server_port
    if request.client_address:
        attributes["client.address"] = request.client_address
    attributes["http.request.body.size"] = len(request.body)
    document = request.json
    if isinstance(document, Mapping):
        if event := _text(document.get("event")):
            attributes["minivoice.event"] = event
        call = document.get("call")
        if isinstance(call, Mapping):
            for name, attribute in (
                ("status", "minivoice.call.status"),
                ("customer_id", "minivoice.customer_id"),
                ("application_id", "minivoice.application_id"),
                ("direction", "minivoice.direction"),
            ):
                if value := _text(call.get(name)):
                    attributes[attribute] = value
            attributes.update(privacy.phone_attributes("from", call.get("from"), key))
            attributes.update(privacy.phone_attributes("to", call.get("to"), key))
    return attributes


def _phone_numbers(request: AnswerUrlRequest) -> list[str]:
    document = request.json
    call = document.get("call") if isinstance(document, Mapping) else None
    if not isinstance(call, Mapping):
        return []
    return [v for v in (call.get("from"), call.get("to")) if isinstance(v, str) and v]


def response_attributes(
    request: AnswerUrlRequest, response: AnswerUrlResponse, max_body_bytes: int
) -> tuple[dict[str, Any], str | None]:
    """The response half of the span: status, recorded body, validation. Pure.

    Returns the attributes and, when the span status must be ERROR, its description.
    """
    attributes: dict[str, Any] = {"http.response.body.size": response.size}
    errors: list[str] = []
    if response.status_code is not None:
        attributes["http.response.status_code"] = response.status_code
        if response.status_code >= 500:
            attributes["error.type"] = str(response.status_code)
            errors.append(f"HTTP {response.status_code}")
    body = _decoded_body(response, max_body_bytes)
    numbers = _phone_numbers(request)
    shown = body[:RECORDED_BODY_BYTES].decode("utf-8", errors="replace")
    redacted_urls: dict[str, str] = {}
    attributes["minivoice.answer_url.response_body"] = privacy.redact_text(shown, numbers, redacted_urls)
    attributes["minivoice.answer_url.response_truncated"] = response.size > RECORDED_BODY_BYTES
    if response.size > max_body_bytes:
        counters.count(counters.ANSWER_URL_BODY_OVER_LIMIT)
        attributes["minivoice.answer_url.validation_skipped"] = "too_large"
        return attributes, "; ".join(errors) or None
    check = check_actions(body)
    attributes["minivoice.answer_url.response_json"] = check.is_json
    attributes["minivoice.action.valid"] = check.valid
    attributes["minivoice.action.count"] = len(check.actions)
    attributes["minivoice.action.types"] = list(check.action_types)
    if check.problems:
        attributes["minivoice.action.problems"] = [p.code for p in check.problems]
        attributes["minivoice.action.problem_messages"] = [
            privacy.redact_text(p.message, numbers) for p in check.problems
        ]
        codes = ", ".join(p.code for p in check.problems)
        errors.append("response is not JSON" if not check.is_json else f"invalid actions: {codes}")
    start_stream = check.start_stream
    if start_stream is not None:
        if isinstance(url := start_stream.get("stream_url"), str):
            # Usually redacted already, inside the recorded body.
            attributes["minivoice.stream_url"] = redacted_urls.get(url) or privacy.redact_url(url)
        if isinstance(track := start_stream.get("track"), str):
            attributes["minivoice.track"] = track[:64]
    return attributes, "; ".join(errors) or None


class _Recorder:
    """Shared by the ASGI and WSGI forms: builds and ends the span, writes the log line."""

    def __init__(
        self,
        *,
        path: str,
        call_id: CallIdExtractor | None,
        tracer_provider: trace.TracerProvider | None,
        pii_key: str | bytes | None,
        max_body_bytes: int,
        clock: Clock | None,
    ) -> None:
        self.path = path.rstrip("/") or "/"
        self.call_id = call_id
        self.tracers = TracerSource(SOURCE, tracer_provider)
        key = pii_key if pii_key is not None else privacy.pii_key()
        self.pii_key = key.encode("utf-8") if isinstance(key, str) else key
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    def matches(self, path: str) -> bool:
        return (path.rstrip("/") or "/") == self.path

    def now(self) -> int:
        return now_ns(self.clock)

    def record(
        self,
        *,
        request: AnswerUrlRequest | Callable[[], AnswerUrlRequest],
        response: AnswerUrlResponse,
        start_ns: int,
        end_ns: int,
        latency_s: float,
        exception: BaseException | None,
    ) -> None:
        """Build, end and log the span of one request. `request` may be a function making it, so
        that work is done here, after the response, and under the guard. Never raises."""
        with counters.guard("answer_url.record"):
            if not isinstance(request, AnswerUrlRequest):
                request = request()
            if response.raw_headers is not None:
                response.decode_headers()
            found, origin = extract_call_id(request, self.call_id)
            attributes = _request_attributes(request, self.pii_key)
            attributes["http.route"] = self.path
            if origin:
                attributes["minivoice.call_id_source"] = origin
            attributes["minivoice.answer_url.latency_ms"] = round(latency_s * 1000, 3)
            error: str | None = None
            if response.status_code is not None or response.size:
                more, error = response_attributes(request, response, self.max_body_bytes)
                attributes.update(more)
            span = start_call_span(
                self.tracers.tracer(), SPAN_NAME, found, SOURCE, attributes=attributes, start_time=start_ns
            )
            if exception is not None:
                span.record_exception(exception, timestamp=end_ns, escaped=True)
                span.set_attribute("error.type", type(exception).__qualname__)
                error = f"{type(exception).__qualname__} raised by the answer_url app"
            if error:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end(end_time=end_ns)
            logs.log_span(span, SOURCE)


class _Wrapper:
    """What both middlewares keep: the wrapped app, and the recorder of the requests to `path`."""

    def __init__(
        self,
        app: Any,
        path: str = "/answer",
        call_id: CallIdExtractor | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        pii_key: str | bytes | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self.recorder = _Recorder(
            path=path,
            call_id=call_id,
            tracer_provider=tracer_provider,
            pii_key=pii_key,
            max_body_bytes=max_body_bytes,
            clock=clock,
        )


# ---------------------------------------------------------------------------------------------
# ASGI


class AnswerUrlMiddleware(_Wrapper):
    """ASGI middleware recording an `answer_url` span for each request to `path`.

    `call_id` is an optional extractor `(AnswerUrlRequest) -> str | None` tried before the body,
    header and query. `tracer_provider` defaults to callscope's (`collectors.configure`).
    `pii_key` defaults to CALLSCOPE_PII_KEY. `clock` (unix ns) is for tests and skewed hosts.

        app = Starlette(routes=...)
        app.add_middleware(AnswerUrlMiddleware, path="/answer")
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or not self.recorder.matches(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        start_ns = self.recorder.now()
        started = time.perf_counter()
        # What the request said, read now (the app may update the scope, as routers do) and
        # decoded after the response.
        head = (
            scope.get("method"),
            scope.get("path"),
            scope.get("query_string"),
            scope.get("headers"),
            scope.get("scheme"),
            scope.get("client"),
            scope.get("server"),
        )
        limit = self.recorder.max_body_bytes
        # Read ahead (bounded) so the call id in the body is known even if the app never reads
        # it; what was read is replayed to the app message by message.
        buffered: list[Any] = []
        body = bytearray()
        read = 0
        complete = False
        while True:
            message = await receive()
            buffered.append(message)
            if message.get("type") != "http.request":
                break
            chunk = message.get("body", b"")
            read += len(chunk)
            if len(body) < limit:
                body += chunk[: limit - len(body)]
            if not message.get("more_body", False):
                complete = read == len(body)
                break
            if len(body) >= limit:
                break
        response = AnswerUrlResponse()
        finished: list[float] = []

        async def replay() -> Any:
            if buffered:
                return buffered.pop(0)
            return await receive()

        async def observe(message: Any) -> None:
            # On the request's path: only note what goes past (headers are decoded later). An
            # inline try costs less than a guard block; the handling is the same.
            try:
                kind = message.get("type")
                if kind == "http.response.body":
                    chunk = message.get("body", b"")
                    response.size += len(chunk)
                    room = limit - len(response.body)
                    if room > 0:
                        response.body += chunk if len(chunk) <= room else chunk[:room]
                    if not message.get("more_body", False):
                        response.complete = True
                elif kind == "http.response.start":
                    response.status_code = int(message.get("status", 0))
                    response.raw_headers = message.get("headers", ())
            except Exception as exc:
                counters.failed("answer_url.observe", exc)
            await send(message)
            if response.complete and not finished:
                finished.append(time.perf_counter())

        exception: BaseException | None = None
        try:
            await self.app(scope, replay, observe)
        except BaseException as exc:
            exception = exc
            raise
        finally:
            # The response has been sent (or the app failed): the rest is off the request's path.
            ended = finished[0] if finished else time.perf_counter()
            end_ns = start_ns + int((ended - started) * 1e9)
            self.recorder.record(
                request=lambda: self._request(head, bytes(body), complete),
                response=response,
                start_ns=start_ns,
                end_ns=end_ns,
                latency_s=ended - started,
                exception=exception,
            )

    @staticmethod
    def _request(head: tuple[Any, ...], body: bytes, complete: bool) -> AnswerUrlRequest:
        method, path, query_string, raw_headers, scheme, client, server = head
        headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in raw_headers or ()
        }
        server = server or (None, None)
        client = client or (None, None)
        host, port = split_host(headers.get("host"))
        return AnswerUrlRequest(
            method=str(method or "GET"),
            path=str(path or ""),
            query_string=bytes(query_string or b"").decode("latin-1"),
            headers=headers,
            body=body,
            body_complete=complete,
            scheme=str(scheme or "http"),
            client_address=client[0],
            server_address=host or server[0],
            server_port=port if host else server[1],
        )


def split_host(value: str | None) -> tuple[str | None, int | None]:
    """A Host header as (address, port); IPv6 brackets removed, as the semantic conventions ask."""
    if not value:
        return None, None
    if value.startswith("["):
        address, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return address, int(port) if port.isdigit() else None
    address, sep, port = value.rpartition(":")
    if sep and port.isdigit() and ":" not in address:
        return address, int(port)
    return value, None


# ---------------------------------------------------------------------------------------------
# WSGI


class _ReplayInput:
    """A `wsgi.input` that yields the bytes read ahead, then the rest of the original stream."""

    def __init__(self, head: bytes, rest: Any, remaining: int | None) -> None:
        self.head = head
        self.position = 0
        self.rest = rest
        self.remaining = remaining  # bytes left in the original per CONTENT_LENGTH, None if unknown

    def _from_rest(self, size: int) -> bytes:
        if self.remaining is not None:
            if self.remaining <= 0:
                return b""
            size = self.remaining if size < 0 else min(size, self.remaining)
        data: bytes = self.rest.read(size) if size >= 0 else self.rest.read()
        if self.remaining is not None:
            self.remaining -= len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        head = self.head[self.position :] if size < 0 else self.head[self.position : self.position + size]
        self.position += len(head)
        if size < 0:
            return head + self._from_rest(-1)
        if len(head) < size:
            return head + self._from_rest(size - len(head))
        return head

    def readline(self, size: int = -1) -> bytes:
        if self.position < len(self.head):
            end = self.head.find(b"\n", self.position)
            stop = len(self.head) if end < 0 else end + 1
            if size >= 0:
                stop = min(stop, self.position + size)
            line = self.head[self.position : stop]
            self.position = stop
            if line.endswith(b"\n") or (size >= 0 and len(line) >= size):
                return line
            return line + (self.rest.readline() if self.remaining is None else self._from_rest_line())
        return self.rest.readline(size) if self.remaining is None else self._from_rest_line(size)

    def _from_rest_line(self, size: int = -1) -> bytes:
        if self.remaining is not None and self.remaining <= 0:
            return b""
        limit = self.remaining if self.remaining is not None else -1
        if size >= 0:
            limit = size if limit < 0 else min(limit, size)
        data: bytes = self.rest.readline(limit)
        if self.remaining is not None:
            self.remaining -= len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class AnswerUrlWSGIMiddleware(_Wrapper):
    """The WSGI twin of `AnswerUrlMiddleware`.

    flask_app.wsgi_app = AnswerUrlWSGIMiddleware(flask_app.wsgi_app, path="/answer")
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.recorder.matches(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        start_ns = self.recorder.now()
        started = time.perf_counter()
        request = self._read_ahead(environ)
        response = AnswerUrlResponse()

        def observing_start_response(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            with counters.guard("answer_url.observe"):
                response.status_code = int(status.split(" ", 1)[0])
                for name, value in headers:
                    if name.lower() == "content-type":
                        response.content_type = value
                    elif name.lower() == "content-encoding":
                        response.content_encoding = value
            return start_response(status, headers, *args)

        try:
            result = self.app(environ, observing_start_response)
        except BaseException as exc:
            ended = time.perf_counter()
            end_ns = start_ns + int((ended - started) * 1e9)
            self.recorder.record(
                request=request,
                response=response,
                start_ns=start_ns,
                end_ns=end_ns,
                latency_s=ended - started,
                exception=exc,
            )
            raise
        return _RecordingIterable(
            result,
            recorder=self.recorder,
            request=request,
            response=response,
            start_ns=start_ns,
            started=started,
        )

    def _read_ahead(self, environ: dict[str, Any]) -> AnswerUrlRequest:
        head = b""
        complete = False
        with counters.guard("answer_url.read_ahead"):
            stream = environ.get("wsgi.input")
            raw_length = environ.get("CONTENT_LENGTH") or ""
            length = int(raw_length) if raw_length.strip().isdigit() else None
            if stream is not None and length:
                wanted = min(length, self.recorder.max_body_bytes)
                chunks: list[bytes] = []
                got = 0
                while got < wanted:  # read() may return short on some servers
                    chunk = stream.read(wanted - got)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
                head = b"".join(chunks)
                complete = len(head) == length
                environ["wsgi.input"] = _ReplayInput(head, stream, length - len(head))
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
        address, port = split_host(host)
        server_port = environ.get("SERVER_PORT")
        headers = {
            name[5:].replace("_", "-").lower(): str(value)
            for name, value in environ.items()
            if name.startswith("HTTP_")
        }
        return AnswerUrlRequest(
            method=str(environ.get("REQUEST_METHOD", "GET")),
            path=str(environ.get("PATH_INFO", "")),
            query_string=str(environ.get("QUERY_STRING", "")),
            headers=headers,
            body=head,
            body_complete=complete,
            scheme=str(environ.get("wsgi.url_scheme", "http")),
            client_address=environ.get("REMOTE_ADDR"),
            server_address=address,
            server_port=port if port is not None else _port(server_port),
        )


def _port(value: object) -> int | None:
    text = str(value or "")
    return int(text) if text.isdigit() else None


class _RecordingIterable:
    """Wraps the app's response iterable: records each chunk as it is yielded, ends the span on
    close (the server always calls close, PEP 3333), and closes the app's iterable."""

    def __init__(
        self,
        result: Iterable[bytes],
        *,
        recorder: _Recorder,
        request: AnswerUrlRequest,
        response: AnswerUrlResponse,
        start_ns: int,
        started: float,
    ) -> None:
        self.result = result
        self.recorder = recorder
        self.request = request
        self.response = response
        self.start_ns = start_ns
        self.started = started
        self.exception: BaseException | None = None
        self.recorded = False

    def __iter__(self) -> Iterator[bytes]:
        limit = self.recorder.max_body_bytes
        try:
            for chunk in self.result:
                with counters.guard("answer_url.observe"):
                    self.response.size += len(chunk)
                    room = limit - len(self.response.body)
                    if room > 0:
                        self.response.body += chunk[:room]
                yield chunk
            self.response.complete = True
        except BaseException as exc:
            self.exception = exc
            raise

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            if not self.recorded:
                self.recorded = True
                ended = time.perf_counter()
                end_ns = self.start_ns + int((ended - self.started) * 1e9)
                self.recorder.record(
                    request=self.request,
                    response=self.response,
                    start_ns=self.start_ns,
                    end_ns=end_ns,
                    latency_s=ended - self.started,
                    exception=self.exception,
                )
