"""Test servers on loopback: any ASGI app under a real uvicorn, and a tiny OTLP/HTTP traces sink.

The sink decodes what the real OTLPSpanExporter sends with `pipeline.otlp.decode_protobuf`, so
tests assert on exported span content exactly as ingest would store it.

    with OTLPSink() as sink:
        exporter = OTLPSpanExporter(endpoint=sink.endpoint)
        ...
        spans = sink.wait_for_spans(1)
        assert spans[0]["attributes"]["minivoice.call_id"] == "call_123"
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from pipeline.otlp import OTLPDecodeError, decode_protobuf


class UvicornThread:
    """Run an ASGI app under uvicorn in a background thread, on 127.0.0.1 and a free port.

    Use as a context manager; `.url` is `http://127.0.0.1:<port>`. The listening socket is
    bound before the thread starts, so there is no port race.
    """

    def __init__(self, app: ASGIApp, *, ws: str = "auto") -> None:
        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port: int = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, ws=ws, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


class OTLPSink:
    """An OTLP/HTTP traces receiver on loopback that keeps every decoded span row.

    `.endpoint` is the full traces URL to give an exporter; `.rows()` the stored rows
    (pipeline.schema.SPAN_SCHEMA columns; `attributes`, `resource_attributes` and each event's
    `attributes` already parsed from JSON); `.status_code` can be set to make it fail.
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.status_code = 200
        app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])
        self._server = UvicornThread(app)
        self.endpoint = f"{self._server.url}/v1/traces"

    async def _traces(self, request: Request) -> Response:
        self.requests += 1
        if self.status_code != 200:
            return Response(status_code=self.status_code)
        body = await request.body()
        encoding = request.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        try:
            batch = decode_protobuf(body, ingested_at_ns=time.time_ns())
        except OTLPDecodeError as exc:
            return Response(str(exc), status_code=400)
        rows = batch.table.to_pylist()
        for row in rows:
            row["attributes"] = json.loads(row["attributes"])
            row["resource_attributes"] = json.loads(row["resource_attributes"])
            for event in row["events"] or []:
                event["attributes"] = json.loads(event["attributes"])
        with self._lock:
            self._rows.extend(rows)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    def rows(self) -> list[dict[str, Any]]:
        """Every span row received so far, in arrival order."""
        with self._lock:
            return list(self._rows)

    def spans(self, name: str | None = None) -> list[dict[str, Any]]:
        """Rows, optionally only those with span name `name`."""
        return [row for row in self.rows() if name is None or row["name"] == name]

    def wait_for_spans(
        self,
        count: int,
        name: str | None = None,
        timeout: float = 10.0,
        flush: Callable[[], object] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` spans (named `name`) arrived; calls `flush` first if given."""
        if flush is not None:
            flush()
        deadline = time.monotonic() + timeout
        while True:
            found = self.spans(name)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def __enter__(self) -> OTLPSink:
        self._server.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.__exit__(exc_type, exc, tb)


def closed_port_endpoint() -> str:
    """A traces URL on a loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"
