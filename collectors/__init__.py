"""callscope collectors: small, safe to embed in the services that talk to MiniVoice.

Runtime dependencies are the OpenTelemetry SDK and its OTLP exporter only; the ASGI, WSGI and
`websockets` integrations use what the host application already has.
"""

from collectors.actions import ActionCheck, ActionProblem, check_actions, validate_actions
from collectors.answer_url import AnswerUrlMiddleware, AnswerUrlRequest, AnswerUrlWSGIMiddleware
from collectors.counters import guard, guarded, stats
from collectors.identity import (
    call_parent,
    call_root_context,
    call_root_span_id,
    call_root_span_id_hex,
    call_trace_id,
    call_trace_id_hex,
)
from collectors.logs import write_logs_to
from collectors.privacy import hash_phone, mask_phone, phone_attributes, redact_text, redact_url
from collectors.receiver import ReceiverMiddleware, instrument_receiver
from collectors.tracing import configure, get_tracer, start_call_span
from collectors.webhooks import Webhook, WebhookCollector, WebhookMiddleware, WebhookProblem, parse_webhook

__all__ = [
    "ActionCheck",
    "ActionProblem",
    "AnswerUrlMiddleware",
    "AnswerUrlRequest",
    "AnswerUrlWSGIMiddleware",
    "ReceiverMiddleware",
    "Webhook",
    "WebhookCollector",
    "WebhookMiddleware",
    "WebhookProblem",
    "call_parent",
    "call_root_context",
    "call_root_span_id",
    "call_root_span_id_hex",
    "call_trace_id",
    "call_trace_id_hex",
    "check_actions",
    "configure",
    "get_tracer",
    "guard",
    "guarded",
    "hash_phone",
    "instrument_receiver",
    "mask_phone",
    "parse_webhook",
    "phone_attributes",
    "redact_text",
    "redact_url",
    "start_call_span",
    "stats",
    "validate_actions",
    "write_logs_to",
]
