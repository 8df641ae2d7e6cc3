"""Backfill: turn the collectors' JSON log lines (docs/collector-logs.md) back into spans.

For logs written before the exporter was set up, or while it was down. Each good line becomes a
span with its original start/end times, events, status, attributes and ids (the original span
id is kept, so a store that deduplicates by span id keeps one copy however often a file is
backfilled). A bad line is reported as `FILE:LINE: reason` and skipped; every good line is kept.

`parse_line` is pure; `Backfill` does the emitting through the real OTLP exporter, in bounded
batches (it flushes every `flush_every` spans so a large file never overflows the export queue).
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

from collectors import counters, privacy
from collectors.logs import FORMAT_VERSION
from collectors.tracing import COLLECTOR_VERSION, build_resource, otlp_processor, start_call_span

SOURCES = ("answer_url", "receiver", "webhook")
MAX_LINE_CHARS = 1024 * 1024
"""Longer lines are reported as bad rather than parsed."""
MAX_RESOURCES = 64
"""Distinct (service.name, host.name) pairs given their own resource; later ones share the default."""
BACKFILLED = "callscope.backfilled"
"""Attribute set to true on every span re-emitted by backfill."""

_KINDS = {kind.name: kind for kind in SpanKind}
_STATUSES = {"UNSET": StatusCode.UNSET, "OK": StatusCode.OK, "ERROR": StatusCode.ERROR}


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One log line, checked and ready to emit."""

    source: str
    name: str
    kind: SpanKind
    call_id: str | None
    start_ns: int
    end_ns: int
    status: StatusCode
    status_message: str | None
    attributes: Mapping[str, Any]
    events: tuple[tuple[str, int, Mapping[str, Any]], ...] = ()
    trace_id: int | None = None
    span_id: int | None = None
    resource: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that was skipped, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class LineError(ValueError):
    """A log line cannot be turned into a span; the message says why."""


@dataclass(frozen=True, slots=True)
class SkippedLine:
    """A line that is fine but is not a span: `blank`, or a record kind other than `span`
    (the receiver's `lifecycle` lines, written as things happen, duplicate its span line)."""

    kind: str


def _int(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineError(f'"{key}" must be an integer (unix nanoseconds), got {_kind(value)}')
    if value < 0:
        raise LineError(f'"{key}" is negative')
    return value


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _attribute_value(key: str, value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if len(kinds) <= 1 and kinds <= {str, bool, int, float}:
            return tuple(value)
        raise LineError(f"attribute {key!r} is a list of mixed or nested values")
    raise LineError(f"attribute {key!r} is a {_kind(value)}; span attributes are scalars or lists of scalars")


def _attributes(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LineError(f"{where} must be an object, got {_kind(value)}")
    return {str(k): _attribute_value(str(k), v) for k, v in value.items() if v is not None}


def _hex_id(value: object, digits: int) -> int | None:
    if not isinstance(value, str) or len(value) != digits:
        return None
    try:
        number = int(value, 16)
    except ValueError:
        return None
    return number or None


def _private(attributes: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    # Lines written by callscope never hold clear numbers; lines from elsewhere might.
    for role in ("from", "to"):
        clear = attributes.pop(f"minivoice.{role}", None)
        if isinstance(clear, str) and clear:
            attributes.update(privacy.phone_attributes(role, clear, key))
    return attributes


def parse_line(text: str, default_source: str, pii_key: bytes | None = None) -> SpanRecord | SkippedLine:
    """Check one log line and turn it into a `SpanRecord`. Raises `LineError` saying what is wrong.

    Text before the first `{` (a logging prefix such as `INFO:callscope.webhooks:`) is ignored.
    A line whose `record` field is present and not `span` is not a span: `SkippedLine`.
    """
    if len(text) > MAX_LINE_CHARS:
        raise LineError(f"line is longer than {MAX_LINE_CHARS} characters")
    start = text.find("{")
    if start < 0:
        raise LineError("no JSON object on this line")
    try:
        record = json.loads(text[start:])
    except (ValueError, RecursionError) as exc:
        raise LineError(f"not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    kind = record.get("record", "span")
    if kind != "span":
        return SkippedLine(str(kind)[:40])
    version = record.get("v", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise LineError(f"format version {version!r} is not {FORMAT_VERSION}; upgrade callscope to read it")
    name = record.get("name")
    if not isinstance(name, str) or not name:
        raise LineError('"name" (the span name) is missing')
    start_ns = _int(record, "start_ns")
    end_ns = _int(record, "end_ns")
    if end_ns < start_ns:
        raise LineError(f'"end_ns" ({end_ns}) is before "start_ns" ({start_ns})')
    kind_name = record.get("kind", "INTERNAL")
    if kind_name not in _KINDS:
        raise LineError(f'"kind" is {kind_name!r}; expected one of {", ".join(_KINDS)}')
    status_name = record.get("status", "UNSET")
    if status_name not in _STATUSES:
        raise LineError(f'"status" is {status_name!r}; expected UNSET, OK or ERROR')
    attributes = _private(_attributes(record.get("attributes"), '"attributes"'), pii_key)
    source = record.get("source") or attributes.get("callscope.source") or default_source
    if not isinstance(source, str):
        raise LineError('"source" must be a string')
    call_id = record.get("call_id") or attributes.get("minivoice.call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise LineError('"call_id" must be a string')
    raw_events = record.get("events") or []
    if not isinstance(raw_events, list):
        raise LineError('"events" must be a list')
    events = []
    for index, event in enumerate(raw_events):
        if not isinstance(event, dict) or not isinstance(event.get("name"), str):
            raise LineError(f"event {index} has no name")
        events.append(
            (event["name"], _int(event, "time_ns"), _attributes(event.get("attributes"), f"event {index}"))
        )
    message = record.get("status_message")
    resource = record.get("resource")
    return SpanRecord(
        source=source,
        name=name,
        kind=_KINDS[kind_name],
        call_id=call_id or None,
        start_ns=start_ns,
        end_ns=end_ns,
        status=_STATUSES[status_name],
        status_message=message if isinstance(message, str) and message else None,
        attributes=attributes,
        events=tuple(events),
        trace_id=_hex_id(record.get("trace_id"), 32),
        span_id=_hex_id(record.get("span_id"), 16),
        resource={k: str(v) for k, v in resource.items() if k in ("service.name", "host.name")}
        if isinstance(resource, dict)
        else {},
    )


def read_lines(
    path: Path, default_source: str, pii_key: bytes | None = None
) -> Iterator[tuple[int, int, SpanRecord | SkippedLine | BadLine]]:
    """(line number, bytes consumed, span record / skipped line / bad line), streaming."""
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                yield number, len(raw), SkippedLine("blank")
                continue
            try:
                text = raw.decode("utf-8")
                yield number, len(raw), parse_line(text, default_source, pii_key)
            except UnicodeDecodeError:
                yield number, len(raw), BadLine(str(path), number, "not UTF-8 text")
            except LineError as exc:
                yield number, len(raw), BadLine(str(path), number, str(exc))


class _PresetIds(IdGenerator):
    """Hands out the original ids of the span being re-emitted, random ones otherwise."""

    def __init__(self) -> None:
        self.local = threading.local()

    def preset(self, trace_id: int | None, span_id: int | None) -> None:
        self.local.ids = (trace_id, span_id)

    def generate_span_id(self) -> int:
        span_id = getattr(self.local, "ids", (None, None))[1]
        return span_id if span_id else random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        trace_id = getattr(self.local, "ids", (None, None))[0]
        return trace_id if trace_id else random.getrandbits(128) or 1


@dataclass(slots=True)
class BackfillResult:
    """What a backfill run did."""

    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    spans: int = 0
    bad: list[BadLine] = field(default_factory=list)
    by_source: dict[str, int] = field(default_factory=dict)
    exported: int = 0
    dropped: int = 0

    @property
    def ok(self) -> bool:
        """No bad line and nothing dropped by the exporter."""
        return not self.bad and not self.dropped


class Backfill:
    """Emits `SpanRecord`s through OTLP/HTTP exporters to `endpoints`, one resource per origin.

    Spans keep their original times and span ids; `callscope.backfilled` is set on each.
    Use as a context manager, or call `close()`: it flushes and shuts the exporters down.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        flush_every: int = 512,
        processor_factory: Callable[[str], Any] = otlp_processor,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.flush_every = flush_every
        self.processor_factory = processor_factory
        self.ids = _PresetIds()
        self.default_resource = build_resource()
        self.providers: dict[tuple[str, str], TracerProvider] = {}
        self.pending = 0

    def _provider(self, resource: Mapping[str, str]) -> TracerProvider:
        key = (resource.get("service.name", ""), resource.get("host.name", ""))
        provider = self.providers.get(key)
        if provider is None:
            if len(self.providers) >= MAX_RESOURCES:
                return self._provider({})
            merged = (
                self.default_resource.merge(Resource(dict(resource))) if resource else self.default_resource
            )
            provider = TracerProvider(resource=merged, id_generator=self.ids, shutdown_on_exit=False)
            for endpoint in self.endpoints:
                provider.add_span_processor(self.processor_factory(endpoint))
            self.providers[key] = provider
        return provider

    def emit(self, record: SpanRecord) -> None:
        """Re-emit one span with its original times, events, status and ids."""
        provider = self._provider(record.resource)
        tracer = provider.get_tracer(f"callscope.collectors.{record.source}", COLLECTOR_VERSION)
        attributes = dict(record.attributes)
        attributes[BACKFILLED] = True
        self.ids.preset(record.trace_id, record.span_id)
        try:
            span = start_call_span(
                tracer,
                record.name,
                record.call_id,
                record.source,
                kind=record.kind,
                attributes=attributes,
                start_time=record.start_ns,
            )
        finally:
            self.ids.preset(None, None)
        for name, time_ns, event_attributes in record.events:
            span.add_event(name, dict(event_attributes), timestamp=time_ns)
        if record.status is not StatusCode.UNSET:
            message = record.status_message if record.status is StatusCode.ERROR else None
            span.set_status(Status(record.status, message))
        span.end(end_time=record.end_ns)
        self.pending += 1
        if self.pending >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Block until every span emitted so far went through the exporters."""
        for provider in self.providers.values():
            provider.force_flush()
        self.pending = 0

    def close(self) -> None:
        """Flush, then shut every exporter down."""
        self.flush()
        for provider in self.providers.values():
            provider.shutdown()

    def __enter__(self) -> Backfill:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def backfill(
    files: Sequence[tuple[str, Path]],
    endpoints: Sequence[str],
    *,
    on_progress: Callable[[int], None] | None = None,
    on_bad_line: Callable[[BadLine], None] | None = None,
    pii_key: bytes | None = None,
    flush_every: int = 512,
) -> BackfillResult:
    """Read each `(source, path)` log file and re-emit its good lines as spans to `endpoints`.

    `on_progress(bytes)` is called as input is consumed; `on_bad_line` for each skipped line.
    Drops are measured with `collectors.stats()` over the run (exports to several endpoints
    count once per endpoint).
    """
    result = BackfillResult()
    before = counters.stats()
    with Backfill(endpoints, flush_every=flush_every) as sender:
        for source, path in files:
            for _number, consumed, item in read_lines(path, source, pii_key):
                result.lines += 1
                if isinstance(item, SkippedLine):
                    result.skipped[item.kind] = result.skipped.get(item.kind, 0) + 1
                elif isinstance(item, BadLine):
                    result.bad.append(item)
                    if on_bad_line is not None:
                        on_bad_line(item)
                else:
                    sender.emit(item)
                    result.spans += 1
                    result.by_source[item.source] = result.by_source.get(item.source, 0) + 1
                if on_progress is not None:
                    on_progress(consumed)
    after = counters.stats()
    result.exported = after["spans_exported"] - before["spans_exported"]
    result.dropped = after["spans_dropped"] - before["spans_dropped"]
    return result


def total_bytes(files: Sequence[tuple[str, Path]]) -> int:
    """The size of all input files, for a progress bar."""
    return sum(os.path.getsize(path) for _, path in files)


__all__ = [
    "BACKFILLED",
    "Backfill",
    "BackfillResult",
    "BadLine",
    "LineError",
    "SkippedLine",
    "SpanRecord",
    "backfill",
    "parse_line",
    "read_lines",
    "total_bytes",
]
