"""Call identity: one trace per call, derived from the call id.

MiniVoice does not propagate trace context between the answer_url request, the media
stream and the webhooks. Every collector therefore derives the same trace id and root span
id from the call id alone, so that the three logs land in one trace without coordination.

    digest   = sha256(("minivoice-call/" + call_id).encode("utf-8"))
    trace_id = int.from_bytes(digest[0:16], "big")
    root_id  = int.from_bytes(digest[16:24], "big")

The derivation is part of the span contract (docs/spans.md); other languages reproduce it.
"""

from __future__ import annotations

import hashlib

from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

CALL_ID_PREFIX = "minivoice-call/"


def _digest(call_id: str) -> bytes:
    return hashlib.sha256((CALL_ID_PREFIX + call_id).encode("utf-8")).digest()


def call_trace_id(call_id: str) -> int:
    """The trace id of a call: the first 16 bytes of the digest, big-endian."""
    return int.from_bytes(_digest(call_id)[:16], "big")


def call_root_span_id(call_id: str) -> int:
    """The span id of the call's root span (`minivoice.call`): bytes 16..24 of the digest."""
    return int.from_bytes(_digest(call_id)[16:24], "big")


def call_trace_id_hex(call_id: str) -> str:
    """The trace id as the 32 lowercase hex digits that Jaeger and OTLP JSON use."""
    return _digest(call_id)[:16].hex()


def call_root_span_id_hex(call_id: str) -> str:
    """The root span id as 16 lowercase hex digits."""
    return _digest(call_id)[16:24].hex()


def call_root_context(call_id: str) -> SpanContext:
    """The remote, sampled span context every collector span of this call is a child of."""
    digest = _digest(call_id)
    return SpanContext(
        trace_id=int.from_bytes(digest[:16], "big"),
        span_id=int.from_bytes(digest[16:24], "big"),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def call_parent(call_id: str) -> NonRecordingSpan:
    """A non-recording span for the call root, for use with `trace.set_span_in_context`."""
    return NonRecordingSpan(call_root_context(call_id))
