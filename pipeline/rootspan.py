"""The `minivoice.call` root span: emitted by the pipeline once a call's verdict is final.

Trace id and span id are the ones derived from the call id (docs/spans.md, `collectors.identity`),
so the collectors' spans, which are all children of that id, hang under it: Jaeger shows one
complete tree per call, and `callscope.verdict=stream_dropped` is a Jaeger tag search. Start is the
earliest thing seen about the call, end the latest (receiver times corrected for clock skew).

Two destinations, each tracked separately by the timeline so that a failure of one never repeats
the other:

- our own span store: the rows are made in SQL (vectorised: a first build over a backlog finalises
  a million calls at once) and written as a span segment through `DataDir.write_segment`;
- the OTLP/HTTP endpoints of `CALLSCOPE_OTLP_ENDPOINTS`: SDK `ReadableSpan`s with explicit ids sent
  by the SDK's own `OTLPSpanExporter` (which honours OTEL_EXPORTER_OTLP_HEADERS, _COMPRESSION,
  _TIMEOUT, certificates, and retries). An endpoint that fails is skipped for `backoff_seconds`;
  its spans stay pending and go with a later step.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callscope import __version__
from pipeline.schema import MINIVOICE_COLUMN, SPAN_SCHEMA
from pipeline.storage import DataDir, utc_day

if TYPE_CHECKING:
    import duckdb
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

ROOT_SPAN_NAME = "minivoice.call"
PIPELINE_SERVICE_NAME = "callscope-pipeline"
SCOPE_NAME = "callscope.pipeline"

#: (attribute, column of the verdicts row) on every root span; null values are left out.
ROOT_ATTRIBUTES = (
    ("minivoice.call_id", "call_id"),
    ("callscope.verdict", "verdict"),
    ("callscope.failure_stage", "failure_stage"),
    ("callscope.reason", "reason"),
    ("callscope.next_step", "next_step"),
    ("minivoice.customer_id", "customer_id"),
    ("minivoice.application_id", "application_id"),
    ("minivoice.direction", "direction"),
    ("minivoice.call.status", "call_status"),
)


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _attributes_json_sql() -> str:
    """SQL: the root span's attributes as JSON text (nulls left out), built by concatenation:
    a first build finalises a million calls at once, and a map through to_json costs 5x more."""
    members = ", ".join(
        f"coalesce(',' || {_lit(_json_string(attr))} || ':' || CAST(to_json({column}) AS VARCHAR), '')"
        for attr, column in ROOT_ATTRIBUTES
    )
    return f"""concat('{{"callscope.source":"pipeline"', {members}, '}}')"""


def root_rows_sql(pending: str, ingested_at_ns: int, host_name: str) -> str:
    """SQL: root span rows in SPAN_SCHEMA (without the typed `minivoice` column) for the rows of
    `pending` (call_id, trace_id, root_span_id, verdict, failure_stage, reason, next_step,
    first_activity_ns, last_activity_ns and the ROOT_ATTRIBUTES columns)."""
    resource = _lit(f'{{"service.name":"{PIPELINE_SERVICE_NAME}","host.name":{_json_string(host_name)}}}')
    return f"""
SELECT trace_id,
       root_span_id AS span_id,
       CAST(NULL AS VARCHAR) AS parent_span_id, CAST(NULL AS VARCHAR) AS trace_state,
       '{ROOT_SPAN_NAME}' AS name, 'INTERNAL' AS kind,
       first_activity_ns AS start_ns, greatest(last_activity_ns, first_activity_ns) AS end_ns,
       CASE WHEN failure_stage <> 'none' THEN 'ERROR' ELSE 'UNSET' END AS status_code,
       CASE WHEN failure_stage <> 'none' THEN verdict || ': ' || reason END AS status_message,
       '{PIPELINE_SERVICE_NAME}' AS service_name, '{SCOPE_NAME}' AS scope_name,
       '{__version__}' AS scope_version,
       call_id, 'pipeline' AS source, {_attributes_json_sql()} AS attributes,
       {resource} AS resource_attributes,
       CAST([] AS STRUCT(time_ns BIGINT, name VARCHAR, attributes VARCHAR)[]) AS events,
       CAST(NULL AS VARCHAR) AS links, CAST({ingested_at_ns} AS BIGINT) AS ingested_at_ns
FROM {pending}
"""


def _json_string(text: str) -> str:
    import json

    return json.dumps(text)


def readable_spans(rows: Sequence[dict[str, Any]], host_name: str) -> list[ReadableSpan]:
    """SDK spans with the derived ids, for the OTLP exporter (rows: verdicts rows as dicts)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    from collectors.identity import call_root_span_id, call_trace_id

    resource = Resource.create({"service.name": PIPELINE_SERVICE_NAME, "host.name": host_name})
    scope = InstrumentationScope(SCOPE_NAME, __version__)
    spans = []
    for row in rows:
        call_id = row["call_id"]
        context = SpanContext(
            trace_id=call_trace_id(call_id),
            span_id=call_root_span_id(call_id),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        attributes: dict[str, Any] = {"callscope.source": "pipeline"}
        attributes.update({attr: row[col] for attr, col in ROOT_ATTRIBUTES if row.get(col) is not None})
        failed = row["failure_stage"] != "none"
        status = Status(StatusCode.ERROR, f"{row['verdict']}: {row['reason']}") if failed else Status()
        start = int(row["first_activity_ns"])
        spans.append(
            ReadableSpan(
                ROOT_SPAN_NAME,
                context=context,
                parent=None,
                resource=resource,
                attributes=attributes,
                kind=SpanKind.INTERNAL,
                status=status,
                start_time=start,
                end_time=max(start, int(row["last_activity_ns"])),
                instrumentation_scope=scope,
            )
        )
    return spans


@dataclass(slots=True)
class ExportOutcome:
    """What one export attempt did: call ids exported to every endpoint, and errors."""

    exported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _default_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


class RootSpanEmitter:
    """Writes root spans to the span store and sends them to the configured OTLP endpoints."""

    def __init__(
        self,
        data: DataDir,
        endpoints: Sequence[str] = (),
        *,
        exporter_factory: Callable[[str], SpanExporter] = _default_exporter,
        backoff_seconds: float = 30.0,
        batch_size: int = 512,
        host_name: str | None = None,
    ) -> None:
        self.data = data
        self.endpoints = tuple(endpoints)
        self.exporter_factory = exporter_factory
        self.backoff_seconds = backoff_seconds
        self.batch_size = batch_size
        self.host_name = host_name or socket.gethostname()
        self._exporters: dict[str, SpanExporter] = {}
        self._failed_at: dict[str, float] = {}

    def store(self, con: duckdb.DuckDBPyConnection, pending: str, ingested_at_ns: int) -> list[Path]:
        """Write the root spans of `pending` (a relation of verdicts rows) as span segments.

        One segment per UTC date of the span's start, like ingest's; written by DuckDB straight
        from the query (a first build may finalise a million calls at once).
        """
        from pipeline.storage import NS_PER_DAY, new_file_name
        from pipeline.timeline import copy_atomic

        rows = f"({root_rows_sql(pending, ingested_at_ns, self.host_name)})"
        days = [d for (d,) in con.execute(f"SELECT DISTINCT start_ns // {NS_PER_DAY} FROM {rows}").fetchall()]
        paths = []
        name = new_file_name("root")
        # Root spans leave the typed `minivoice` column out (readers see it as null; the
        # attributes JSON holds the verdict), like any writer that does not fill it.
        columns = ", ".join(f'"{c}"' for c in SPAN_SCHEMA.names if c != MINIVOICE_COLUMN)
        for day in sorted(days):
            directory = self.data.partition_dir(utc_day(day * NS_PER_DAY))
            directory.mkdir(parents=True, exist_ok=True)
            query = f"SELECT {columns} FROM {rows} WHERE start_ns // {NS_PER_DAY} = {day}"
            with self.data.partition_lock(exclusive=False):
                paths.append(copy_atomic(con, query, directory / name, fsync=self.data.fsync))
        if paths:
            self.data.refresh_views_if_changed()
        return paths

    def export(self, rows: Sequence[dict[str, Any]]) -> ExportOutcome:
        """Send root spans to every endpoint; a call counts as exported when all endpoints took it."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        outcome = ExportOutcome()
        if not self.endpoints or not rows:
            return outcome
        now = time.monotonic()
        ready = [e for e in self.endpoints if now - self._failed_at.get(e, -1e9) >= self.backoff_seconds]
        if len(ready) < len(self.endpoints):
            return outcome  # an endpoint is backing off: its spans wait for a later step
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            spans = readable_spans(batch, self.host_name)
            ok = True
            for endpoint in self.endpoints:
                exporter = self._exporters.get(endpoint)
                if exporter is None:
                    exporter = self._exporters[endpoint] = self.exporter_factory(endpoint)
                try:
                    result = exporter.export(spans)
                except Exception as exc:  # telemetry never stops the build: count it and retry later
                    result = SpanExportResult.FAILURE
                    logger.warning("root span export to %s raised %s", endpoint, exc)
                if result is not SpanExportResult.SUCCESS:
                    ok = False
                    self._failed_at[endpoint] = time.monotonic()
                    outcome.errors.append(
                        f"{endpoint}: export failed; {len(rows) - start} root spans will be retried"
                    )
                    break
            if not ok:
                break
            outcome.exported.extend(row["call_id"] for row in batch)
        return outcome

    def shutdown(self) -> None:
        """Shut the exporters down (closes their HTTP sessions)."""
        for exporter in self._exporters.values():
            exporter.shutdown()
        self._exporters.clear()
