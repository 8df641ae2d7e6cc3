"""Real spans for timeline tests: made with the OTel SDK the way the collectors make them.

Each helper starts a span through `collectors.tracing.start_call_span` (so it is a child of the
call's derived root, with `minivoice.call_id`, `callscope.source` and the collector version),
with explicit times and the attributes of docs/spans.md. The answer_url's action attributes come
from the real validator (`collectors.actions.check_actions`). `rows()` exports the finished spans
through the OTLP protobuf encoder and decodes them with ingest's decoder (`pipeline.otlp`): the
rows the pipeline sees are the rows ingest would have stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from collectors.actions import check_actions
from collectors.tracing import start_call_span
from pipeline.otlp import decode_protobuf
from pipeline.storage import DataDir

#: 2026-05-29T12:09:58Z, two seconds before the MiniVoice doc's call.completed example.
T0 = 1_780_056_598 * 1_000_000_000
S = 1_000_000_000
MS = 1_000_000

GOOD_ACTIONS = {
    "actions": [{"type": "start_stream", "stream_url": "wss://media.example.com/minivoice", "track": "both"}]
}
BAD_ACTIONS = {
    "actions": [
        {"type": "start_stream", "stream_url": "https://media.example.com/minivoice", "track": "speaker"}
    ]
}


class SpanFactory:
    """Makes collector-shaped spans for any number of calls, then hands them over as stored rows."""

    def __init__(self, service: str = "app") -> None:
        self.exporter = InMemorySpanExporter()
        self.providers: dict[str, TracerProvider] = {}
        self.service = service
        self._last_ingested = 0

    def _tracer(self, service: str) -> Any:
        if service not in self.providers:
            provider = TracerProvider(
                resource=Resource.create({"service.name": service, "host.name": f"{service}-host"}),
                shutdown_on_exit=False,
            )
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            self.providers[service] = provider
        return self.providers[service].get_tracer("callscope.test")

    # ---- the three logs ----------------------------------------------------------------------

    def answer_url(
        self,
        call_id: str,
        at: int,
        *,
        body: Any = GOOD_ACTIONS,
        status: int = 200,
        latency_ms: float = 80.0,
        service: str = "answer-app",
    ) -> None:
        """One answer_url request: MiniVoice's POST, the app's response `body` (JSON-able or str)."""
        text = body if isinstance(body, str) else json.dumps(body)
        check = check_actions(text)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.path": "/answer",
            "http.route": "/answer",
            "http.response.status_code": status,
            "minivoice.call_id_source": "body",
            "minivoice.event": "call.answered",
            "minivoice.call.status": "in-progress",
            "minivoice.customer_id": "cust_123",
            "minivoice.application_id": "app_123",
            "minivoice.direction": "outbound",
            "minivoice.from.masked": "+1555***0001",
            "minivoice.to.masked": "+1555***0002",
            "minivoice.answer_url.latency_ms": latency_ms,
            "minivoice.answer_url.response_json": check.is_json,
            "minivoice.answer_url.response_body": text[:4096],
            "minivoice.action.count": len(check.actions),
            "minivoice.action.types": list(check.action_types),
            "minivoice.action.valid": check.valid,
            "minivoice.action.problems": [p.code for p in check.problems],
            "minivoice.action.problem_messages": [p.message for p in check.problems],
        }
        start = check.start_stream
        if start is not None:
            if isinstance(start.get("stream_url"), str):
                attributes["minivoice.stream_url"] = start["stream_url"]
            if isinstance(start.get("track"), str):
                attributes["minivoice.track"] = start["track"]
        if status >= 500:
            attributes["error.type"] = str(status)
        span = start_call_span(
            self._tracer(service), "answer_url", call_id, "answer_url", attributes=attributes, start_time=at
        )
        if not check.valid or status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=at + int(latency_ms * MS))

    def receiver(
        self,
        call_id: str | None,
        opened: int,
        closed: int,
        *,
        frames: int = 500,
        stop_reason: str | None = "call_ended",
        close_code: int | None = 1000,
        closed_by: str = "platform",
        close_reason: str = "",
        errors: Sequence[tuple[str, str]] = (),
        gap_max_ms: int = 20,
        skew_ns: int = 0,
        service: str = "receiver",
    ) -> None:
        """One WebSocket connection as the receiver saw it, on its own clock (`skew_ns` ahead)."""
        opened += skew_ns
        closed += skew_ns
        attributes: dict[str, Any] = {
            "minivoice.stream_id": f"str_{call_id}",
            "minivoice.call_id_source": "start",
            "minivoice.stream.tracks": ["inbound", "outbound"],
            "minivoice.media.frames": frames,
            "minivoice.media.bytes": frames * 160,
            "minivoice.media.gap_max_ms": gap_max_ms if frames else 0,
            "minivoice.closed_by": closed_by,
            "minivoice.errors": len(errors),
        }
        if frames:
            attributes["minivoice.media.first_at_unix_nano"] = opened + 40 * MS
            attributes["minivoice.media.last_at_unix_nano"] = closed - 30 * MS
        if stop_reason is not None:
            attributes["minivoice.stop.reason"] = stop_reason
        if close_code is not None:
            attributes["minivoice.close.code"] = close_code
        if close_reason:
            attributes["minivoice.close.reason"] = close_reason
        span = start_call_span(
            self._tracer(service),
            "stream.receiver",
            call_id,
            "receiver",
            attributes=attributes,
            start_time=opened,
        )
        span.add_event(
            "connected",
            {"minivoice.protocol": "minivoice.stream", "minivoice.protocol_version": "1"},
            timestamp=opened + MS,
        )
        span.add_event(
            "start",
            {
                "minivoice.call_id": call_id or "",
                "minivoice.stream_id": f"str_{call_id}",
                "minivoice.stream.tracks": ["inbound", "outbound"],
            },
            timestamp=opened + 2 * MS,
        )
        if frames:
            span.add_event(
                "first_media",
                {"minivoice.media.track": "inbound", "minivoice.media.chunk": 1},
                timestamp=opened + 40 * MS,
            )
        for i, (error_type, message) in enumerate(errors):
            span.add_event(
                "error",
                {"error.type": error_type, "error.message": message},
                timestamp=opened + (100 + i) * MS,
            )
        if stop_reason is not None:
            span.add_event("stop", {"minivoice.stop.reason": stop_reason}, timestamp=closed - 10 * MS)
        ended_well = stop_reason is not None and close_code == 1000 and not errors
        span.set_status(Status(StatusCode.OK) if ended_well else Status(StatusCode.ERROR, "stream problem"))
        span.end(end_time=closed)

    def webhook(
        self,
        call_id: str,
        event: str,
        created_at: int,
        *,
        status: str | None = None,
        delay_ms: int = 40,
        service: str = "webhook-app",
    ) -> None:
        """One webhook delivery; `created_at` has whole-second resolution, like MiniVoice's."""
        created = created_at // S * S
        status = status or {
            "call.initiated": "initiated",
            "call.ringing": "ringing",
            "call.answered": "in-progress",
            "call.completed": "completed",
        }.get(event, "unknown")
        attributes = {
            "http.request.method": "POST",
            "url.path": "/webhooks",
            "http.response.status_code": 200,
            "minivoice.event": event,
            "minivoice.webhook.created_at": str(created),
            "minivoice.webhook.created_at_unix_nano": created,
            "minivoice.call.status": status,
            "minivoice.direction": "outbound",
            "minivoice.customer_id": "cust_123",
            "minivoice.application_id": "app_123",
        }
        received = created_at + delay_ms * MS
        span = start_call_span(
            self._tracer(service), "webhook", call_id, "webhook", attributes=attributes, start_time=received
        )
        span.end(end_time=received + 2 * MS)

    # ---- whole calls -------------------------------------------------------------------------

    def lifecycle(
        self, call_id: str, start: int, end: int, *, final_status: str = "completed", answered: bool = True
    ) -> None:
        """The webhooks of a call from `start` to `end` (call.completed at `end`)."""
        self.webhook(call_id, "call.initiated", start)
        self.webhook(call_id, "call.ringing", start + S)
        if answered:
            self.webhook(call_id, "call.answered", start + 2 * S)
        self.webhook(call_id, "call.completed", end, status=final_status)

    def ok_call(self, call_id: str, start: int = T0, *, duration_s: float = 20.0, skew_ns: int = 0) -> None:
        """A call that streamed and ended well: stop, close 1000, then call.completed."""
        end = start + int(duration_s * S)
        self.lifecycle(call_id, start, end + 50 * MS)
        self.answer_url(call_id, start + 2 * S)
        self.receiver(
            call_id, start + 2 * S + 300 * MS, end, frames=int((duration_s - 2.3) * 50), skew_ns=skew_ns
        )

    # ---- handing over ------------------------------------------------------------------------

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def rows(
        self, ingested_at_ns: int | None = None, spans: Sequence[ReadableSpan] | None = None
    ) -> pa.Table:
        """The spans as stored rows (SPAN_SCHEMA), through OTLP protobuf and ingest's decoder.

        `ingested_at_ns` defaults to a second after the last span ended, and after any earlier
        batch of this factory (ingest's clock only moves forward).
        """
        chosen = self.spans() if spans is None else list(spans)
        if ingested_at_ns is None:
            ended = max((s.end_time or 0) for s in chosen)
            ingested_at_ns = max(ended + S, self._last_ingested + S)
        self._last_ingested = max(self._last_ingested, ingested_at_ns)
        body = encode_spans(chosen).SerializeToString()
        return decode_protobuf(body, ingested_at_ns).table

    def clear(self) -> None:
        """Forget the spans made so far (the next `rows()` holds only new ones)."""
        self.exporter.clear()

    def shutdown(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()


@contextmanager
def span_factory() -> Iterator[SpanFactory]:
    """A SpanFactory, shut down afterwards."""
    factory = SpanFactory()
    try:
        yield factory
    finally:
        factory.shutdown()


def write_rows(data: DataDir, rows: pa.Table) -> list[Path]:
    """Store rows as ingest does (one segment per UTC date)."""
    return data.write_segment(rows)
