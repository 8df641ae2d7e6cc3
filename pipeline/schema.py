"""The stored span row: one schema shared by ingest, import, backfill checks and the timeline.

Documented column by column in docs/storage.md. Changing it is a storage-format change:
old segments must stay readable (DuckDB's `union_by_name` covers added nullable columns).
"""

from __future__ import annotations

import pyarrow as pa

#: Span attribute that carries the MiniVoice call id (promoted to the `call_id` column).
CALL_ID_ATTRIBUTE = "minivoice.call_id"
#: Span attribute naming the collector that made the span (promoted to the `source` column).
SOURCE_ATTRIBUTE = "callscope.source"

EVENT_TYPE = pa.struct(
    [
        pa.field("time_ns", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("attributes", pa.string()),  # JSON object, typed values
    ]
)

SPAN_SCHEMA = pa.schema(
    [
        pa.field("trace_id", pa.string(), nullable=False),  # 32 lowercase hex digits
        pa.field("span_id", pa.string(), nullable=False),  # 16 lowercase hex digits
        pa.field("parent_span_id", pa.string()),  # null for a root span
        pa.field("trace_state", pa.string()),
        pa.field("name", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # INTERNAL SERVER CLIENT PRODUCER CONSUMER UNSPECIFIED
        pa.field("start_ns", pa.int64(), nullable=False),  # unix epoch nanoseconds
        pa.field("end_ns", pa.int64(), nullable=False),
        pa.field("status_code", pa.string(), nullable=False),  # UNSET OK ERROR
        pa.field("status_message", pa.string()),
        pa.field("service_name", pa.string()),
        pa.field("scope_name", pa.string()),
        pa.field("scope_version", pa.string()),
        pa.field("call_id", pa.string()),  # from the minivoice.call_id attribute
        pa.field("source", pa.string()),  # from callscope.source: answer_url | receiver | webhook | pipeline
        pa.field("attributes", pa.string()),  # JSON object, typed values
        pa.field("resource_attributes", pa.string()),  # JSON object, typed values
        pa.field("events", pa.list_(EVENT_TYPE)),
        pa.field("links", pa.string()),  # JSON list of {trace_id, span_id, attributes}, or null
        pa.field("ingested_at_ns", pa.int64(), nullable=False),  # when ingest accepted it
    ]
)

SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")
