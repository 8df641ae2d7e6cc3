"""The webhook collector: acknowledge MiniVoice's call webhooks fast, one `webhook` span each.

`WebhookCollector(on_event=None)` is an ASGI app; `WebhookMiddleware(app, path="/webhooks")`
puts one in front of an existing app. For every delivery:

1. the body is read with a size cap (`max_body_bytes`, 413 beyond it) and a time limit
   (`read_timeout`, 408 when a slow client has not sent it all), so no peer can hold memory or a
   worker;
2. `parse_webhook` (pure, total) turns it into a `Webhook` or a `WebhookProblem`; a problem is
   answered 400 with a JSON message that says what is wrong;
3. the delivery is acknowledged (200) and its span recorded (with the call id whenever one
   can be found, malformed deliveries included), with a `duplicate` flag from a bounded
   recent-set (MiniVoice delivers at least once);
4. `on_event` runs afterwards on a worker thread fed by a bounded queue: a slow or failing
   callback never delays an ack and never loses a span; queue overflow and callback failures
   are counted (`collectors.stats()`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from collectors import counters, logs, privacy
from collectors.answer_url import split_host
from collectors.tracing import Clock, TracerSource, now_ns, start_call_span

SOURCE = "webhook"
SPAN_NAME = "webhook"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Largest webhook body accepted (413 beyond). MiniVoice's are well under 4 KiB."""
DEFAULT_READ_TIMEOUT = 10.0
"""Seconds allowed to receive the whole body (408 after)."""
DEFAULT_QUEUE_SIZE = 1000
"""Deliveries waiting for `on_event`; beyond this, callbacks are dropped (and counted)."""
DEFAULT_RECENT_SIZE = 10_000
DEFAULT_RECENT_TTL = 600.0


@dataclass(frozen=True, slots=True)
class Webhook:
    """One well-formed MiniVoice webhook delivery. `document` is the whole parsed body."""

    event: str
    call_id: str
    created_at: str | None = None
    created_at_unix_nano: int | None = None
    status: str | None = None
    direction: str | None = None
    customer_id: str | None = None
    application_id: str | None = None
    from_number: str | None = field(default=None, repr=False)
    to_number: str | None = field(default=None, repr=False)
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class WebhookProblem:
    """Why a delivery was refused. `code` is stable (`not_json`, `not_an_object`,
    `missing_event`, `missing_call_id`, `too_large`, `read_timeout`); `message` says how to fix it."""

    code: str
    message: str
    call_id: str | None = None
    event: str | None = None


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def parse_created_at(value: str | None) -> int | None:
    """An ISO-8601 timestamp (`2026-05-29T12:10:00Z`) as unix nanoseconds; None if unparseable.
    A timestamp without an offset is taken as UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    except OverflowError:
        return None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def parse_webhook(body: bytes | str) -> Webhook | WebhookProblem:
    """Read one webhook body. Pure and total: never raises, whatever the input."""
    try:
        return _parse(body)
    except Exception as exc:  # the parser must be total; a bug here is a refused delivery
        return WebhookProblem("not_json", f"the body could not be read ({type(exc).__name__})")


def _parse(body: bytes | str) -> Webhook | WebhookProblem:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return WebhookProblem(
            "not_json", "the body is not JSON; MiniVoice webhooks are JSON objects with event and call"
        )
    if not isinstance(document, dict):
        return WebhookProblem(
            "not_an_object",
            f"the body is a JSON {type(document).__name__}, not an object with event and call",
        )
    event = _text(document.get("event"))
    call = document.get("call")
    call = call if isinstance(call, dict) else {}
    call_id = _text(call.get("id"))
    if event is None:
        return WebhookProblem(
            "missing_event", 'the body has no "event" (e.g. "call.completed")', call_id=call_id
        )
    if call_id is None:
        return WebhookProblem(
            "missing_call_id",
            'the body has no "call": {"id": ...}; every MiniVoice webhook names its call',
            event=event,
        )
    created_at = _text(document.get("created_at"))
    return Webhook(
        event=event[:128],
        call_id=call_id,
        created_at=created_at,
        created_at_unix_nano=parse_created_at(created_at),
        status=_text(call.get("status")),
        direction=_text(call.get("direction")),
        customer_id=_text(call.get("customer_id")),
        application_id=_text(call.get("application_id")),
        from_number=_text(call.get("from")),
        to_number=_text(call.get("to")),
        document=document,
    )


class RecentDeliveries:
    """A bounded recent-set of (event, call id): at most `max_items`, each kept `ttl` seconds.

    Memory stays bounded whatever the traffic: the oldest entry goes first when full.
    """

    def __init__(self, max_items: int = DEFAULT_RECENT_SIZE, ttl: float = DEFAULT_RECENT_TTL) -> None:
        self.max_items = max_items
        self.ttl = ttl
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, key: tuple[str, str], now: float | None = None) -> bool:
        """Record `key`; True if it was already recorded within the last `ttl` seconds."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if moment - at <= self.ttl:
                    break
                del self._seen[oldest]
            duplicate = key in self._seen
            self._seen[key] = moment
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_items:
                self._seen.popitem(last=False)
            return duplicate

    def __len__(self) -> int:
        return len(self._seen)


EventCallback = Callable[[Webhook], Any] | Callable[[Webhook], Awaitable[Any]]
_STOP = object()


class CallbackWorker:
    """Runs `on_event` off the request path: one daemon thread, a bounded queue.

    Sync callbacks run on the thread; async callbacks run on the thread's own event loop, so
    neither can stall the server's loop. Started on first use; `close()` drains and stops it.
    """

    def __init__(self, callback: EventCallback, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.callback = callback
        self.queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, webhook: Webhook) -> bool:
        """Queue a delivery for the callback; False (and counted) if the queue is full or closed."""
        if self._closed:
            counters.count(counters.WEBHOOK_CALLBACKS_DROPPED)
            return False
        self._ensure_started()
        try:
            self.queue.put_nowait(webhook)
        except queue.Full:
            counters.count(counters.WEBHOOK_CALLBACKS_DROPPED)
            counters.log_once(
                "webhook-queue-full",
                "callscope: the webhook on_event queue is full (%d); on_event is slower than "
                "deliveries. Dropped callbacks are counted in stats()['webhook_callbacks_dropped']; "
                "spans are still recorded.",
                self.queue.maxsize,
            )
            return False
        return True

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="callscope-webhook-on-event", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        # An async callback's coroutines run on this thread's own loop, made on first need.
        runner: list[asyncio.Runner] = []
        try:
            while True:
                item = self.queue.get()
                try:
                    if item is _STOP:
                        return
                    if isinstance(item, Webhook):
                        self._call(item, runner)
                finally:
                    self.queue.task_done()
        finally:
            for each in runner:
                each.close()

    def _call(self, webhook: Webhook, runner: list[asyncio.Runner]) -> None:
        try:
            result = self.callback(webhook)
            if inspect.isawaitable(result):
                if not runner:
                    runner.append(asyncio.Runner())
                runner[0].run(_awaited(result))
        except Exception as exc:  # the user's callback failing must not stop the worker
            counters.count(counters.WEBHOOK_CALLBACK_FAILURES)
            counters.log_once(
                f"webhook-callback-{type(exc).__name__}",
                "callscope: webhook on_event raised %s: %s (counted in stats()['webhook_callback_failures'])",
                type(exc).__name__,
                exc,
            )

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every queued delivery went through the callback; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Let queued callbacks finish (up to `timeout` s), then stop the thread."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


def _json_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


class WebhookCollector:
    """ASGI app receiving MiniVoice webhooks: fast ack, one `webhook` span per delivery.

    `on_event(webhook)` (sync or async) runs on a worker thread after the ack. Call `close()`
    on shutdown to let queued callbacks finish. Options are keyword-only; see module docs.

        collector = WebhookCollector(on_event=store_call_result)
        app = Starlette(routes=[Mount("/webhooks", app=collector)])
    """

    def __init__(
        self,
        on_event: EventCallback | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        pii_key: str | bytes | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        recent: RecentDeliveries | None = None,
        route: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.tracers = TracerSource(SOURCE, tracer_provider)
        key = pii_key if pii_key is not None else privacy.pii_key()
        self.pii_key = key.encode("utf-8") if isinstance(key, str) else key
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.recent = recent if recent is not None else RecentDeliveries()
        self.worker = CallbackWorker(on_event, queue_size) if on_event is not None else None
        self.route = route
        self.clock = clock

    def close(self, timeout: float = 5.0) -> None:
        """Stop the callback worker after the queued callbacks ran (up to `timeout` s)."""
        if self.worker is not None:
            self.worker.close(timeout)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope.get("type") != "http":
            return
        if scope.get("method") != "POST":
            await self._respond(
                send,
                405,
                {"error": "method_not_allowed", "message": "deliver webhooks with POST"},
                extra_headers=[(b"allow", b"POST")],
            )
            return
        start_ns = now_ns(self.clock)
        started = time.perf_counter()
        body, problem = await self._read_body(scope, receive)
        outcome: Webhook | WebhookProblem = problem if problem is not None else parse_webhook(body)
        duplicate = False
        payload: dict[str, Any]
        if isinstance(outcome, Webhook):
            with counters.guard("webhooks.duplicate"):
                duplicate = self.recent.seen((outcome.event, outcome.call_id))
            status, payload = 200, {"received": True, "duplicate": duplicate}
        else:
            counters.count(counters.WEBHOOK_REJECTED)
            status = {"too_large": 413, "read_timeout": 408}.get(outcome.code, 400)
            payload = {"error": outcome.code, "message": outcome.message}
        try:
            await self._respond(send, status, payload)
        finally:
            ended = time.perf_counter()
            end_ns = start_ns + int((ended - started) * 1e9)
            self._record(
                scope,
                outcome=outcome,
                duplicate=duplicate,
                status=status,
                body_size=len(body),
                start_ns=start_ns,
                end_ns=end_ns,
            )
        if isinstance(outcome, Webhook) and self.worker is not None:
            with counters.guard("webhooks.submit"):
                self.worker.submit(replace(outcome, duplicate=True) if duplicate else outcome)

    async def _read_body(self, scope: Any, receive: Any) -> tuple[bytes, WebhookProblem | None]:
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() == b"content-length":
                declared = bytes(value).strip()
                if declared.isdigit() and int(declared) > limit:
                    return b"", _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    message = await receive()
                    if message.get("type") != "http.request":
                        break  # client went away; parse what arrived
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return b"", _too_large(limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return b"".join(chunks), WebhookProblem(
                "read_timeout", f"the body did not arrive within {self.read_timeout:g} s"
            )
        return b"".join(chunks), None

    @staticmethod
    async def _respond(
        send: Any,
        status: int,
        payload: Mapping[str, Any],
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = _json_body(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status in (408, 413):
            headers.append((b"connection", b"close"))
        await send(
            {"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])}
        )
        await send({"type": "http.response.body", "body": body})

    def _record(
        self,
        scope: Any,
        *,
        outcome: Webhook | WebhookProblem,
        duplicate: bool,
        status: int,
        body_size: int,
        start_ns: int,
        end_ns: int,
    ) -> None:
        with counters.guard("webhooks.record"):
            attributes = _http_attributes(scope, self.route)
            attributes["http.response.status_code"] = status
            attributes["http.request.body.size"] = body_size
            if isinstance(outcome, Webhook):
                call_id: str | None = outcome.call_id
                attributes.update(self._webhook_attributes(outcome))
                attributes["minivoice.webhook.duplicate"] = duplicate
            else:
                call_id = outcome.call_id
                attributes["minivoice.webhook.error"] = outcome.code
                attributes["error.type"] = outcome.code
                if outcome.event:
                    attributes["minivoice.event"] = outcome.event
            span = start_call_span(
                self.tracers.tracer(), SPAN_NAME, call_id, SOURCE, attributes=attributes, start_time=start_ns
            )
            if isinstance(outcome, WebhookProblem):
                span.set_status(Status(StatusCode.ERROR, f"{outcome.code}: {outcome.message}"))
            span.end(end_time=end_ns)
            logs.log_span(span, SOURCE)

    def _webhook_attributes(self, webhook: Webhook) -> dict[str, Any]:
        attributes: dict[str, Any] = {"minivoice.event": webhook.event}
        for attribute, value in (
            ("minivoice.webhook.created_at", webhook.created_at),
            ("minivoice.webhook.created_at_unix_nano", webhook.created_at_unix_nano),
            ("minivoice.call.status", webhook.status),
            ("minivoice.direction", webhook.direction),
            ("minivoice.customer_id", webhook.customer_id),
            ("minivoice.application_id", webhook.application_id),
        ):
            if value is not None:
                attributes[attribute] = value
        attributes.update(privacy.phone_attributes("from", webhook.from_number, self.pii_key))
        attributes.update(privacy.phone_attributes("to", webhook.to_number, self.pii_key))
        return attributes

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _too_large(limit: int) -> WebhookProblem:
    return WebhookProblem("too_large", f"the body is larger than {limit} bytes")


def _http_attributes(scope: Any, route: str | None) -> dict[str, Any]:
    headers = {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in scope.get("headers", ())
    }
    path = str(scope.get("path", ""))
    root_path = str(scope.get("root_path", ""))
    if root_path and not path.startswith(root_path):  # older servers strip the mount prefix
        path = root_path + path
    attributes: dict[str, Any] = {
        "http.request.method": str(scope.get("method", "POST")),
        "url.path": path,
        "url.scheme": str(scope.get("scheme", "http")),
        "http.route": route or path,
    }
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    if query:
        attributes["url.query"] = privacy.redact_query(query)
    if agent := headers.get("user-agent"):
        attributes["user_agent.original"] = agent[:256]
    host, port = split_host(headers.get("host"))
    server = scope.get("server") or (None, None)
    if host or server[0]:
        attributes["server.address"] = host or server[0]
    if (port if host else server[1]) is not None:
        attributes["server.port"] = port if host else server[1]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    return attributes


class WebhookMiddleware:
    """Puts a `WebhookCollector` in front of an existing ASGI app at `path`.

    Requests to `path` are answered by the collector; everything else goes to `app`. Extra
    keyword options go to `WebhookCollector`. Lifespan events reach `app`; call `close()` (or
    let the process end) to stop the callback worker.

        app = WebhookMiddleware(app, path="/webhooks", on_event=handle_call_event)
    """

    def __init__(
        self, app: Any, path: str = "/webhooks", on_event: EventCallback | None = None, **options: Any
    ) -> None:
        self.app = app
        self.path = path.rstrip("/") or "/"
        options.setdefault("route", self.path)
        self.collector = WebhookCollector(on_event, **options)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the collector's callback worker (see `WebhookCollector.close`)."""
        self.collector.close(timeout)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and (str(scope.get("path", "")).rstrip("/") or "/") == self.path:
            await self.collector(scope, receive, send)
            return
        await self.app(scope, receive, send)
