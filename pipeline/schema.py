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

# ---- The typed `minivoice` column ---------------------------------------------------------------
#
# Building timelines reads about 40 MiniVoice attributes of every span. Parsing them out of the JSON
# `attributes` text costs seconds of CPU per million calls, and the same parse repeats in every
# dashboard query. The decoders hold each attribute as a typed OTLP value anyway, so ingest fills one
# typed struct column with them (pipeline.otlp, both decoders). The `attributes` JSON stays the
# source of truth; segments written without the column stay readable (union_by_name: null), and the
# timeline parses the JSON for them (pipeline.facts).
#
# Conversion, exactly (the same in both decoders): a field takes the value of its span attribute
# (the last one if the key repeats) when that value has the field's type:
#   string        <- string_value
#   int64         <- int_value
#   float64       <- double_value (NaN and infinities included), or int_value converted (float(i))
#   bool          <- bool_value
#   list<string>  <- array_value whose every element is a string_value (an empty array: [])
# Anything else (absent, no value, another type, bytes, kvlist, an array holding a non-string) is
# null. The struct itself is never null in a row ingest wrote: a null `minivoice` means the row came
# from a segment or writer without the column.
#
# Changing this list is a storage-format change (docs/storage.md). Adding a field is compatible:
# DuckDB's union_by_name merges struct fields by name, so older segments show it as null (even where
# their JSON has the attribute). Renaming or retyping a field needs a migration note.
MINIVOICE_COLUMN = "minivoice"
MINIVOICE_FIELDS: tuple[tuple[str, str, pa.DataType], ...] = (
    # the call, on every source
    ("event", "minivoice.event", pa.string()),
    ("call_status", "minivoice.call.status", pa.string()),
    ("customer_id", "minivoice.customer_id", pa.string()),
    ("application_id", "minivoice.application_id", pa.string()),
    ("direction", "minivoice.direction", pa.string()),
    ("from_masked", "minivoice.from.masked", pa.string()),
    ("to_masked", "minivoice.to.masked", pa.string()),
    ("from_hash", "minivoice.from.hash", pa.string()),
    ("to_hash", "minivoice.to.hash", pa.string()),
    # answer_url (HTTP semantic conventions + the action)
    ("http_method", "http.request.method", pa.string()),
    ("url_path", "url.path", pa.string()),
    ("http_status_code", "http.response.status_code", pa.int64()),
    ("error_type", "error.type", pa.string()),
    ("latency_ms", "minivoice.answer_url.latency_ms", pa.float64()),
    ("response_json", "minivoice.answer_url.response_json", pa.bool_()),
    ("response_body", "minivoice.answer_url.response_body", pa.string()),
    # "too_large": the body was not validated, so the action fields are null (not an invalid action)
    ("validation_skipped", "minivoice.answer_url.validation_skipped", pa.string()),
    ("action_count", "minivoice.action.count", pa.int64()),
    ("action_types", "minivoice.action.types", pa.list_(pa.string())),
    ("action_valid", "minivoice.action.valid", pa.bool_()),
    ("action_problems", "minivoice.action.problems", pa.list_(pa.string())),
    ("action_problem_messages", "minivoice.action.problem_messages", pa.list_(pa.string())),
    ("stream_url", "minivoice.stream_url", pa.string()),
    ("track", "minivoice.track", pa.string()),
    # stream receiver
    ("stream_id", "minivoice.stream_id", pa.string()),
    ("stream_tracks", "minivoice.stream.tracks", pa.list_(pa.string())),
    ("media_frames", "minivoice.media.frames", pa.int64()),
    # per track: MiniVoice's tracks are inbound and outbound ("both" is the two); a track announced
    # in `start` that sent nothing is recorded as 0 by the collector
    ("media_inbound_frames", "minivoice.media.inbound.frames", pa.int64()),
    ("media_outbound_frames", "minivoice.media.outbound.frames", pa.int64()),
    ("media_sequence_gaps", "minivoice.media.sequence_gaps", pa.int64()),
    ("media_gap_max_ms", "minivoice.media.gap_max_ms", pa.int64()),
    ("media_first_at_ns", "minivoice.media.first_at_unix_nano", pa.int64()),
    ("media_last_at_ns", "minivoice.media.last_at_unix_nano", pa.int64()),
    ("stop_reason", "minivoice.stop.reason", pa.string()),
    ("close_code", "minivoice.close.code", pa.int64()),
    ("close_reason", "minivoice.close.reason", pa.string()),
    ("closed_by", "minivoice.closed_by", pa.string()),
    ("errors", "minivoice.errors", pa.int64()),
    # webhooks
    ("created_at_ns", "minivoice.webhook.created_at_unix_nano", pa.int64()),
    ("webhook_duplicate", "minivoice.webhook.duplicate", pa.bool_()),
    ("webhook_error", "minivoice.webhook.error", pa.string()),
)
MINIVOICE_TYPE = pa.struct([pa.field(name, arrow_type) for name, _, arrow_type in MINIVOICE_FIELDS])

#: SPAN_SCHEMA without the `minivoice` column: segments written before it, and writers that do not
#: fill it (the pipeline's root spans). Readers see the column as null there.
UNTYPED_SPAN_SCHEMA = pa.schema(
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

SPAN_SCHEMA = UNTYPED_SPAN_SCHEMA.append(pa.field(MINIVOICE_COLUMN, MINIVOICE_TYPE))

SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")
