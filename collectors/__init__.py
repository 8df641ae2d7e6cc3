"""callscope collectors: small, safe to embed in the services that talk to MiniVoice.

Runtime dependencies are the OpenTelemetry SDK and its OTLP exporter only; the ASGI, WSGI and
`websockets` integrations use what the host application already has.
"""

from collectors.actions import ActionCheck, ActionProblem, check_actions, validate_actions
from collectors.identity import (
    call_parent,
    call_root_context,
    call_root_span_id,
    call_root_span_id_hex,
    call_trace_id,
    call_trace_id_hex,
)

__all__ = [
    "ActionCheck",
    "ActionProblem",
    "call_parent",
    "call_root_context",
    "call_root_span_id",
    "call_root_span_id_hex",
    "call_trace_id",
    "call_trace_id_hex",
    "check_actions",
    "validate_actions",
]
