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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    return None if value is None else format(value, f"0{width}x")


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The log-line object of a finished span (pure; the format is documented in docs/collector-logs.md)."""
    attributes = {k: _jsonable(v) for k, v in (span.attributes or {}).items()}
    context = span.context
    start_ns = span.start_time or 0
    end_ns = span.end_time or start_ns
    resource = span.resource.attributes if span.resource is not None else {}
    record: dict[str, Any] = {
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
            {
                "name": event.name,
                "time_ns": event.timestamp,
                "attributes": {k: _jsonable(v) for k, v in (event.attributes or {}).items()},
            }
            for event in span.events
        ],
        "resource": {
            k: _jsonable(resource[k]) for k in ("service.name", "host.name") if resource.get(k) is not None
        },
    }
    return record


def log_span(span: Span | ReadableSpan, source: str | None = None) -> None:
    """Write one JSON line for a finished span to its source's logger.

    Does nothing for a non-recording span (no SDK provider, or not sampled), or when the
    logger is not enabled for INFO, so an unconfigured app pays almost nothing. Never raises.
    """
    with counters.guard("logs.log_span"):
        if not isinstance(span, ReadableSpan):
            return
        attributes = span.attributes or {}
        name = source or str(attributes.get("callscope.source", "collector"))
        target = logger_for(name)
        if not target.isEnabledFor(logging.INFO):
            return
        line = json.dumps(span_record(span), separators=(",", ":"), ensure_ascii=False, default=str)
        target.info(line)
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
