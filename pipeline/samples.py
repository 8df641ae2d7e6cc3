"""Realistic callscope spans as OTLP requests, for the ingest benchmark and tests.

Built directly as `ExportTraceServiceRequest` protobuf (not through the SDK) so that millions can be
made quickly. Each call yields what the collectors send (docs/spans.md): one `answer_url` span, one
`stream.receiver` span with its events, and three `webhook` spans, all parented on the call root.
Deterministic for a given seed.
"""

from __future__ import annotations

import random
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from collectors.identity import call_root_span_id_hex, call_trace_id_hex

SPANS_PER_CALL = 5
_MS = 1_000_000


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        result = AnyValue()
        result.array_value.values.extend(_value(v) for v in value)
        return result
    return AnyValue(string_value=str(value))


def _attributes(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_value(value)) for key, value in values.items()]


def _call_spans(call_id: str, start_ns: int, rng: random.Random) -> list[Span]:
    trace_id = bytes.fromhex(call_trace_id_hex(call_id))
    root = bytes.fromhex(call_root_span_id_hex(call_id))
    common = {"minivoice.call_id": call_id, "callscope.collector.version": "0.1.0"}
    caller = {
        "minivoice.from.masked": "+1555***0002",
        "minivoice.to.masked": "+1555***0099",
        "minivoice.customer_id": "cust_42",
        "minivoice.application_id": "app_7",
        "minivoice.direction": "inbound",
    }

    def span(name: str, offset_ms: int, duration_ms: int, attributes: dict[str, Any]) -> Span:
        result = Span(
            trace_id=trace_id,
            span_id=rng.getrandbits(64).to_bytes(8, "big"),
            parent_span_id=root,
            name=name,
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=start_ns + offset_ms * _MS,
            end_time_unix_nano=start_ns + (offset_ms + duration_ms) * _MS,
            flags=0x301,
        )
        result.attributes.extend(_attributes({**common, **attributes}))
        return result

    latency = rng.uniform(5, 400)
    answer = span(
        "answer_url",
        100,
        int(latency),
        {
            "callscope.source": "answer_url",
            "http.request.method": "POST",
            "url.path": "/answer",
            "url.scheme": "https",
            "http.route": "/answer",
            "http.response.status_code": 200,
            "server.address": "voice.example.com",
            "client.address": "203.0.113.9",
            "minivoice.call_id_source": "body",
            "minivoice.event": "call.answered",
            "minivoice.call.status": "in-progress",
            **caller,
            "minivoice.answer_url.latency_ms": latency,
            "minivoice.answer_url.response_json": True,
            "minivoice.answer_url.response_body": '[{"action":"start_stream","url":"wss://rx.example.com/'
            'media?token=REDACTED","track":"both"}]',
            "minivoice.action.count": 1,
            "minivoice.action.types": ["start_stream"],
            "minivoice.action.valid": True,
            "minivoice.stream_url": "wss://rx.example.com/media?token=REDACTED",
            "minivoice.track": "both",
        },
    )
    frames = rng.randrange(500, 5000)
    receiver = span(
        "stream.receiver",
        600,
        frames * 20,
        {
            "callscope.source": "receiver",
            "minivoice.stream_id": f"st_{call_id}",
            "minivoice.call_id_source": "start",
            "minivoice.stream.tracks": ["inbound", "outbound"],
            "minivoice.media.encoding": "audio/x-mulaw",
            "minivoice.media.sample_rate": 8000,
            "minivoice.media.channels": 1,
            "minivoice.media.frames": frames,
            "minivoice.media.bytes": frames * 160,
            "minivoice.media.sequence_gaps": 0,
            "minivoice.media.gap_max_ms": 40,
            "minivoice.stop.reason": "call_ended",
            "minivoice.close.code": 1000,
            "minivoice.closed_by": "platform",
            "minivoice.errors": 0,
            "url.path": "/media",
            "client.address": "198.51.100.20",
        },
    )
    for offset_ms, event_name, event_attributes in (
        (600, "connected", {"minivoice.protocol": "minivoice.stream", "minivoice.protocol_version": 1}),
        (610, "start", {"minivoice.stream_id": f"st_{call_id}", "minivoice.media.sample_rate": 8000}),
        (630, "first_media", {"minivoice.media.track": "inbound", "minivoice.media.chunk": 1}),
        (600 + frames * 20, "stop", {"minivoice.stop.reason": "call_ended"}),
    ):
        event = receiver.events.add(time_unix_nano=start_ns + offset_ms * _MS, name=event_name)
        event.attributes.extend(_attributes(event_attributes))
    receiver.status.CopyFrom(Status(code=Status.STATUS_CODE_OK))
    spans = [answer, receiver]
    for offset_ms, event_name, status in (
        (0, "call.initiated", "ringing"),
        (90, "call.answered", "in-progress"),
        (700 + frames * 20, "call.completed", "completed"),
    ):
        spans.append(
            span(
                "webhook",
                offset_ms,
                3,
                {
                    "callscope.source": "webhook",
                    "http.request.method": "POST",
                    "url.path": "/webhooks",
                    "http.response.status_code": 204,
                    "minivoice.event": event_name,
                    "minivoice.webhook.created_at": "2024-05-01T12:00:00Z",
                    "minivoice.webhook.created_at_unix_nano": start_ns + offset_ms * _MS,
                    "minivoice.call.status": status,
                    **caller,
                    "minivoice.webhook.duplicate": False,
                },
            )
        )
    return spans


def sample_request(
    n_spans: int, *, seed: int = 0, start_ns: int = 1_714_564_800 * 10**9
) -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest with `n_spans` realistic spans from one service.

    Spans come in calls of SPANS_PER_CALL; the last call is cut short to make the count exact.
    """
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    resource_spans: ResourceSpans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        _attributes(
            {
                "service.name": "voice-app",
                "host.name": "voice-app-1",
                "service.version": "2.3.1",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.version": "1.45.2",
            }
        )
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "callscope.collectors"
    scope_spans.scope.version = "0.1.0"
    made = 0
    call_index = 0
    while made < n_spans:
        call_id = f"call_{seed}_{call_index}"
        spans = _call_spans(call_id, start_ns + call_index * 1_000 * _MS, rng)
        scope_spans.spans.extend(spans[: n_spans - made])
        made += min(len(spans), n_spans - made)
        call_index += 1
    return request
