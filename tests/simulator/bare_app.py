"""A bare customer app for simulator tests: Starlette + websockets, no collectors, records everything.

It lets the tests check the simulator's wire behaviour from the customer's side: what the
answer_url received, which frames the receiver got and how the stream ended, which webhooks
arrived in which order.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from simulator.serving import AsgiServer, TlsMaterial, bind_port, port_of


@dataclass
class StreamRecord:
    """What the receiver saw on one connection."""

    path: str
    events: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_rcvd: bool = False


@dataclass
class BareApp:
    """Starts an answer_url + webhook HTTP server and a TLS WebSocket receiver on loopback."""

    actions: Callable[[str], dict[str, Any]] | None = None
    answer_status: int = 200
    answer_delay_s: float = 0.0
    answer_html: str | None = None
    """Answer 200 with this HTML instead of JSON."""
    webhook_failures: int = 0
    """Answer this many webhook deliveries with 503 before accepting."""
    close_early_after: int = 3

    answer_requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    webhook_attempts: int = 0
    streams: list[StreamRecord] = field(default_factory=list)
    tls: TlsMaterial = field(default_factory=TlsMaterial.generate)

    async def __aenter__(self) -> BareApp:
        http = Starlette(
            routes=[
                Route("/answer", self._answer, methods=["POST"]),
                Route("/webhooks", self._webhook, methods=["POST"]),
            ]
        )
        self._http = AsgiServer(http, bind_port("127.0.0.1", 0))
        await self._http.start()
        ws_sock = bind_port("127.0.0.1", 0)
        self.ws_port = port_of(ws_sock)
        self._ws: Server = await serve(
            self._receive,
            sock=ws_sock,
            ssl=self.tls.server_context(),
            process_request=self._process_request,
            compression=None,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ws.close()
        await self._ws.wait_closed()
        await self._http.stop()

    @property
    def answer_url(self) -> str:
        return f"http://127.0.0.1:{self._http.port}/answer"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self._http.port}/webhooks"

    def stream_url(self, path: str = "/stream") -> str:
        return f"wss://127.0.0.1:{self.ws_port}{path}"

    def client_context(self) -> ssl.SSLContext:
        return self.tls.client_context()

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        self.answer_requests.append((dict(request.headers), body))
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        if self.answer_status != 200:
            return PlainTextResponse("boom", status_code=self.answer_status)
        if self.answer_html is not None:
            return HTMLResponse(self.answer_html)
        scenario = request.headers.get("x-callscope-scenario", "happy")
        if self.actions is not None:
            return JSONResponse(self.actions(scenario))
        return JSONResponse(
            {"actions": [{"type": "start_stream", "stream_url": self.stream_url(), "track": "both"}]}
        )

    async def _webhook(self, request: Request) -> Response:
        self.webhook_attempts += 1
        if self.webhook_attempts <= self.webhook_failures:
            return PlainTextResponse("try later", status_code=503)
        self.webhooks.append(await request.json())
        return Response(status_code=204)

    def _process_request(self, connection: ServerConnection, request: WsRequest) -> WsResponse | None:
        if request.path.startswith("/reject"):
            return connection.respond(HTTPStatus.FORBIDDEN, "no streams for you\n")
        return None

    async def _receive(self, ws: ServerConnection) -> None:
        record = StreamRecord(path=ws.request.path if ws.request else "")
        self.streams.append(record)
        media = 0
        try:
            async for raw in ws:
                message = json.loads(raw)
                record.events.append(message["event"])
                if message["event"] != "media":
                    record.messages.append(message)
                else:
                    media += 1
                    if record.path.startswith("/close-early") and media >= self.close_early_after:
                        await ws.close(1011, "receiver overloaded")
                        break
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        record.close_code = ws.close_code
        record.close_rcvd = ws.protocol.close_rcvd is not None
