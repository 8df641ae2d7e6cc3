"""The demo customer application: what a MiniVoice customer runs, with callscope's collectors installed.

Three services, as a customer would have them:

- a Starlette app with the answer_url (`POST /answer`, returns `start_stream`) and the webhook
  endpoint (`POST /webhooks`), instrumented with `collectors.AnswerUrlMiddleware` and
  `collectors.WebhookMiddleware`;
- a `websockets` stream receiver over TLS (`wss`), wrapped with `collectors.instrument_receiver`,
  with a private CA and certificate generated at start-up; the simulator is given the CA;
- a second receiver "on another host" whose clock is off by seconds (the collector's `clock`),
  and a TLS listener with a certificate from a CA nobody trusts.

The customer-side faults of `simulator.scenarios` are this app's own bugs, chosen per call by
the `X-Callscope-Scenario` header the simulator adds to the answer_url request: the answer_url
errors, stalls, answers HTML, or returns a bad action or a stream_url that leads to a refused
port, an untrusted certificate, a rejected handshake (a missing token) or an overloaded
receiver that closes with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from collectors import AnswerUrlMiddleware, Webhook, WebhookMiddleware, instrument_receiver
from simulator.platform import PlatformConfig
from simulator.scenarios import SCENARIO_HEADER
from simulator.serving import AsgiServer, TlsMaterial, bind_port, closed_port, port_of
from simulator.stream import StreamOptions
from simulator.webhooks import WebhookOptions

logger = logging.getLogger("callscope.demo_app")

StreamHandler = Callable[[ServerConnection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DemoAppConfig:
    """Ports and fault parameters of the demo app. Port 0 picks a free port."""

    host: str = "127.0.0.1"
    http_port: int = 0
    receiver_port: int = 0
    skewed_receiver_port: int = 0
    untrusted_receiver_port: int = 0
    answer_url_stall_s: float = 6.0
    """How long the answer_url stalls in `answer_url_timeout`: longer than MiniVoice waits."""
    receiver_clock_offset_ms: int = -4000
    """Clock error of the second receiver's host (`skewed_receiver_clock`)."""
    overloaded_after_frames: int = 6
    """Media frames the overloaded receiver takes before closing with 1011."""
    tracer_provider: TracerProvider | None = None
    """Where the collectors send spans; None: callscope's default (`collectors.configure`)."""
    http_port_option: str | None = "--app-port"
    receiver_port_option: str | None = "--receiver-port"


@dataclass(slots=True)
class ReceiverStats:
    """What the demo receivers did, for the demo's own summary."""

    connections: int = 0
    media_frames: int = 0
    closed_overloaded: int = 0
    rejected_handshakes: int = 0


@dataclass(slots=True)
class _Listener:
    server: Server | None = None
    port: int = 0


class DemoApp:
    """Runs the demo customer app inside the current event loop. Use as an async context manager."""

    def __init__(self, config: DemoAppConfig | None = None) -> None:
        self.config = config or DemoAppConfig()
        self.tls = TlsMaterial.generate("127.0.0.1", "localhost")
        self.untrusted_tls = TlsMaterial.generate("127.0.0.1", "localhost")  # a CA nobody trusts
        self.stream_token = secrets.token_urlsafe(16)
        self.receiver_stats = ReceiverStats()
        self.webhook_events: Counter[str] = Counter()
        self._http: AsgiServer | None = None
        self._webhooks: WebhookMiddleware | None = None
        self._receiver = _Listener()
        self._skewed = _Listener()
        self._untrusted = _Listener()
        self._down_port = 0

    # lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> DemoApp:
        config = self.config
        # Bind every port first: a busy one is reported before anything starts.
        http_sock = bind_port(config.host, config.http_port, config.http_port_option)
        sockets = [http_sock]
        try:
            receiver_sock = bind_port(config.host, config.receiver_port, config.receiver_port_option)
            sockets.append(receiver_sock)
            skewed_sock = bind_port(config.host, config.skewed_receiver_port)
            sockets.append(skewed_sock)
            untrusted_sock = bind_port(config.host, config.untrusted_receiver_port)
            sockets.append(untrusted_sock)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self._down_port = closed_port(config.host)
        self._http = AsgiServer(self._http_app(), http_sock)
        await self._http.start()
        provider = config.tracer_provider
        self._receiver = await self._listen(
            receiver_sock, self.tls.server_context(), self._instrument(self._receive, provider, None)
        )
        offset_ns = config.receiver_clock_offset_ms * 1_000_000
        skewed_clock: Callable[[], int] = lambda: time.time_ns() + offset_ns  # noqa: E731
        self._skewed = await self._listen(
            skewed_sock, self.tls.server_context(), self._instrument(self._receive, provider, skewed_clock)
        )
        untrusted_handler = self._instrument(self._receive, provider, None)
        self._untrusted = await self._listen(
            untrusted_sock, self.untrusted_tls.server_context(), untrusted_handler
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every listener; in-flight requests and streams get a short grace."""
        for listener in (self._receiver, self._skewed, self._untrusted):
            if listener.server is not None:
                listener.server.close()
                await listener.server.wait_closed()
                listener.server = None
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._webhooks is not None:
            await asyncio.to_thread(self._webhooks.close)
            self._webhooks = None

    async def _listen(self, sock: Any, context: ssl.SSLContext, handler: StreamHandler) -> _Listener:
        server = await serve(
            handler,
            sock=sock,
            ssl=context,
            process_request=self._authenticate,
            compression=None,
            ping_interval=None,
            max_size=1024 * 1024,
        )
        return _Listener(server, port_of(sock))

    # addresses ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._http is not None, "DemoApp is not running"
        return f"http://{self.config.host}:{self._http.port}"

    @property
    def answer_url(self) -> str:
        """The answer_url to give MiniVoice."""
        return self.base_url + "/answer"

    @property
    def webhook_url(self) -> str:
        """The webhook URL to give MiniVoice."""
        return self.base_url + "/webhooks"

    @property
    def receiver_port(self) -> int:
        return self._receiver.port

    def client_context(self) -> ssl.SSLContext:
        """TLS trust for the simulator: the demo CA (and not the untrusted one)."""
        return self.tls.client_context()

    def platform_config(
        self,
        *,
        answer_url_timeout_s: float,
        media_seconds: float,
        speed: float,
        ring_seconds: float | None = None,
        webhook_backoff_s: float = 0.1,
    ) -> PlatformConfig:
        """A simulated MiniVoice pointed at this app: its answer_url and webhook URLs, trusting its
        CA for the streams. `ring_seconds` defaults to `media_seconds`."""
        trust = self.client_context()
        return PlatformConfig(
            answer_url=self.answer_url,
            webhook_url=self.webhook_url,
            answer_url_timeout_s=answer_url_timeout_s,
            media_seconds=media_seconds,
            speed=speed,
            ring_seconds=media_seconds if ring_seconds is None else ring_seconds,
            ssl_context=trust,
            stream=StreamOptions(ssl_context=trust),
            webhooks=WebhookOptions(backoff_s=webhook_backoff_s),
        )

    def stream_url(self, scenario: str, call_id: str | None = None) -> str:
        """The stream_url the answer_url returns for a call of `scenario`.

        With the call id in the query (as some deployments do, and as callscope advises), the
        receiver's span is the call's even when the stream closes before its `start` message."""
        host = self.config.host
        token = f"?token={self.stream_token}"
        if call_id:
            token += "&" + urlencode({"call_id": call_id})
        match scenario:
            case "receiver_down":
                return f"wss://{host}:{self._down_port}/minivoice{token}"
            case "tls_failure":
                return f"wss://{host}:{self._untrusted.port}/minivoice{token}"
            case "handshake_rejected":
                return f"wss://{host}:{self._receiver.port}/minivoice"  # the bug: no token
            case "receiver_closes_early":
                return f"wss://{host}:{self._receiver.port}/minivoice/overloaded{token}"
            case "skewed_receiver_clock":
                return f"wss://{host}:{self._skewed.port}/minivoice{token}"
            case "invalid_scheme":
                return f"https://{host}:{self._receiver.port}/minivoice{token}"
            case _:
                return f"wss://{host}:{self._receiver.port}/minivoice{token}"

    # the answer_url and webhook app ---------------------------------------------------------

    def _http_app(self) -> Any:
        """The customer's web app, with the answer_url and webhook collectors installed."""
        app = Starlette(
            routes=[
                Route("/answer", self._answer, methods=["POST"]),
                Route("/healthz", lambda _r: PlainTextResponse("ok"), methods=["GET"]),
            ]
        )
        provider = self.config.tracer_provider
        self._webhooks = WebhookMiddleware(
            app, path="/webhooks", on_event=self._on_webhook, tracer_provider=provider
        )
        return AnswerUrlMiddleware(self._webhooks, path="/answer", tracer_provider=provider)

    async def _answer(self, request: Request) -> Response:
        """The customer's answer_url: start a stream of both tracks to our receiver."""
        scenario = request.headers.get(SCENARIO_HEADER.lower(), "happy")
        try:
            body = await request.body()
        except ClientDisconnect:
            return Response(status_code=400)  # MiniVoice hung up (Ctrl+C); nobody reads this
        call_id = _call_id_of(body)
        if scenario == "answer_url_500":
            return PlainTextResponse("CRM lookup failed: upstream unavailable", status_code=500)
        if scenario == "answer_url_timeout":
            await asyncio.sleep(self.config.answer_url_stall_s)
        if scenario == "answer_url_not_json":
            return HTMLResponse("<html><body><h1>Welcome to Example Corp</h1></body></html>")
        action = {"type": "start_stream", "stream_url": self.stream_url(scenario, call_id), "track": "both"}
        if scenario == "no_stream_requested":
            # This call needs no live audio: only stop any stream (valid, and no start_stream).
            action["type"] = "stop_stream"
        if scenario == "invalid_track":
            action["track"] = "speaker"
        return JSONResponse({"actions": [action]})

    def _on_webhook(self, webhook: Webhook) -> None:
        """The customer's own webhook processing (the collector runs it off the request path)."""
        self.webhook_events[webhook.event] += 1

    # the stream receivers -------------------------------------------------------------------

    def _instrument(
        self, handler: StreamHandler, provider: TracerProvider | None, clock: Callable[[], int] | None
    ) -> StreamHandler:
        return instrument_receiver(handler, tracer_provider=provider, clock=clock)

    def _authenticate(self, connection: ServerConnection, request: WsRequest) -> WsResponse | None:
        """Only MiniVoice, with our token in the stream_url, may open a stream."""
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        if not secrets.compare_digest(token, self.stream_token):
            self.receiver_stats.rejected_handshakes += 1
            return connection.respond(HTTPStatus.FORBIDDEN, "missing or wrong stream token\n")
        return None

    async def _receive(self, ws: ServerConnection) -> None:
        """The customer's receiver: forward media to (pretend) transcription, quickly."""
        stats = self.receiver_stats
        stats.connections += 1
        overloaded = urlsplit(ws.request.path if ws.request else "").path.endswith("/overloaded")
        frames = 0
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("event") != "media":
                    continue
                frames += 1
                stats.media_frames += 1
                if overloaded and frames >= self.config.overloaded_after_frames:
                    stats.closed_overloaded += 1
                    # Keep reading while closing: frames already in flight would otherwise fill
                    # the receive queue, pause reading, and hide MiniVoice's close reply.
                    await asyncio.gather(ws.close(1011, "transcriber overloaded"), _discard(ws))
                    return
        except ConnectionClosed:
            # The platform or the network ended the stream: close local resources and go on;
            # call.completed still arrives on the webhook.
            return


async def _discard(ws: ServerConnection) -> None:
    """Read and drop messages until the connection is closed."""
    with contextlib.suppress(ConnectionClosed):
        async for _message in ws:
            pass


def _call_id_of(body: bytes) -> str | None:
    """`call.id` of an answer_url request body, or None."""
    try:
        call = json.loads(body).get("call")
    except (ValueError, AttributeError):
        return None
    call_id = call.get("id") if isinstance(call, dict) else None
    return call_id if isinstance(call_id, str) and call_id else None
