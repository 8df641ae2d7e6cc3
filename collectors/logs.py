"""The three logs the MiniVoice docs ask for, as JSON lines through stdlib logging.

One logger per source: `callscope.answer_url`, `callscope.receiver`, `callscope.webhooks`.
Each finished collector span becomes one INFO record whose message is one JSON object holding
everything needed to rebuild the span (see docs/collector-logs.md), and nothing private: the
line is made from the span's attributes, which the collectors have already masked and redacted.

Route them like any other log (`logging.getLogger("callscope.webhooks").addHandler(...)`), or
use `json_file_handler(path)` to get one clean JSON object per line. `callscope backfill` reads
these lines back and re-emits the spans with their original timestamps.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Span

from collectors import counters

FORMAT_VERSION = 1
"""The `v` field of every line; bumped only for an incompatible change of the line format."""

LOGGER_NAMES = {
    "answer_url": "callscope.answer_url",
    "receiver": "callscope.receiver",
    "webhook": "callscope.webhooks",
}
"""Logger name per `callscope.source` value."""

_loggers = {source: logging.getLogger(name) for source, name in LOGGER_NAMES.items()}


def logger_for(source: str) -> logging.Logger:
    """The stdlib logger of one source (`answer_url`, `receiver`, `webhook`)."""
    found = _loggers.get(source)
    return found if found is not None else logging.getLogger(f"callscope.{source}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _hex(value: int | None, width: int) -> str | None:
    return None if value is None else format(value, "032x" if width == 32 else "016x")


class _ResourceFields:
    """The resource fields of the last provider seen (one resource per provider: read once, not
    per line). The pair is swapped as one tuple, so threads never mix two providers' fields."""

    last: tuple[Any, dict[str, Any]] = (None, {})

    @classmethod
    def of(cls, resource: Any) -> dict[str, Any]:
        if resource is None:
            return {}
        cached, fields = cls.last
        if cached is not resource:
            attributes = resource.attributes
            names = ("service.name", "host.name")
            fields = {k: _jsonable(attributes[k]) for k in names if attributes.get(k) is not None}
            cls.last = (resource, fields)
        return dict(fields)


def _jsonable_attributes(attributes: Any) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in (attributes or {}).items()}


def _plain_attributes(attributes: Any) -> dict[str, Any]:
    # The SDK's BoundedAttributes copies to a plain dict in one C call; for orjson its values are
    # ready as they are (tuples are arrays), except bytes, which `_default` writes as hex.
    copy = getattr(attributes, "copy", None)
    return copy() if callable(copy) else dict(attributes or {})


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The log-line object of a finished span (pure; the format is documented in docs/collector-logs.md)."""
    return _record(span, _jsonable_attributes)


def _record(span: ReadableSpan, attributes_of: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    attributes = attributes_of(span.attributes)
    context = span.context
    start_ns = span.start_time or 0
    end_ns = span.end_time or start_ns
    return {
        "v": FORMAT_VERSION,
        "record": "span",
        "time": datetime.fromtimestamp(start_ns / 1e9, tz=UTC).isoformat(timespec="microseconds"),
        "source": attributes.get("callscope.source"),
        "name": span.name,
        "kind": span.kind.name,
        "call_id": attributes.get("minivoice.call_id"),
        "start_ns": start_ns,
        "end_ns": end_ns,
        "duration_ms": round((end_ns - start_ns) / 1e6, 3),
        "status": span.status.status_code.name,
        "status_message": span.status.description,
        "trace_id": _hex(context.trace_id, 32) if context is not None else None,
        "span_id": _hex(context.span_id, 16) if context is not None else None,
        "parent_span_id": _hex(span.parent.span_id, 16) if span.parent is not None else None,
        "attributes": attributes,
        "events": [
            {"name": event.name, "time_ns": event.timestamp, "attributes": attributes_of(event.attributes)}
            for event in span.events
        ],
        "resource": _ResourceFields.of(span.resource),
    }


def _default(value: Any) -> Any:
    # What orjson cannot write itself, as `json.dumps(..., default=str)` with `_jsonable` would.
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return _jsonable(value)
    return str(value)


def span_line(span: ReadableSpan) -> str:
    """The JSON line of a finished span: `span_record` written compactly, non-ASCII as is."""
    record = _record(span, _plain_attributes)
    try:
        return orjson.dumps(record, default=_default).decode("utf-8")
    except (TypeError, ValueError):  # e.g. an int over 64 bits: the stdlib writes anything
        record = span_record(span)
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)


def log_span(span: Span | ReadableSpan, source: str | None = None) -> None:
    """Write one JSON line for a finished span to its source's logger.

    Does nothing for a non-recording span (no SDK provider, or not sampled), or when the
    logger is not enabled for INFO, so an unconfigured app pays almost nothing. Never raises.
    """
    with counters.guard("logs.log_span"):
        if not isinstance(span, ReadableSpan):
            return
        if source is None:
            source = str((span.attributes or {}).get("callscope.source", "collector"))
        target = logger_for(source)
        if not target.isEnabledFor(logging.INFO):
            return
        # `Logger.info` would also look up the caller's file and line (a frame walk) for a record
        # whose message is the whole story: make the record and hand it to the handlers directly.
        record = target.makeRecord(target.name, logging.INFO, __file__, 0, span_line(span), (), None)
        target.handle(record)
        counters.count(counters.LOG_LINES)


def json_file_handler(path: str | os.PathLike[str], level: int = logging.INFO) -> logging.FileHandler:
    """A file handler that writes each record's message alone: one JSON object per line."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


LOG_FILE_NAMES = {"answer_url": "answer_url.jsonl", "receiver": "receiver.jsonl", "webhook": "webhooks.jsonl"}
"""File names used by `write_logs_to`, one per source (the three separate logs)."""


class LogFiles:
    """The three per-source log files opened by `write_logs_to`; `close()` (or `with`) undoes it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.handlers: dict[str, logging.Handler] = {}
        self._previous: dict[str, tuple[int, bool]] = {}

    def path(self, source: str) -> Path:
        """The file of one source (`answer_url`, `receiver`, `webhook`)."""
        return self.directory / LOG_FILE_NAMES[source]

    def close(self) -> None:
        """Detach and close the handlers, and restore each logger's level and propagation."""
        for source, handler in self.handlers.items():
            target = logger_for(source)
            target.removeHandler(handler)
            handler.close()
            level, propagate = self._previous[source]
            target.setLevel(level)
            target.propagate = propagate
        self.handlers.clear()

    def __enter__(self) -> LogFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_logs_to(directory: str | os.PathLike[str], propagate: bool = False) -> LogFiles:
    """Send each source's JSON lines to its own file in `directory` (created if missing):
    `answer_url.jsonl`, `receiver.jsonl`, `webhooks.jsonl`.

    Sets the three loggers to INFO. With `propagate=False` (the default) the lines go only to
    the files, not also to the app's root handlers.
    """
    files = LogFiles(Path(directory))
    files.directory.mkdir(parents=True, exist_ok=True)
    for source in LOG_FILE_NAMES:
        handler = json_file_handler(files.path(source))
        target = logger_for(source)
        files._previous[source] = (target.level, target.propagate)
        target.setLevel(logging.INFO)
        target.propagate = propagate
        target.addHandler(handler)
        files.handlers[source] = handler
    return files
