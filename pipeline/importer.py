"""Import OTLP JSON-lines files (the OpenTelemetry Collector file exporter's format) into segments.

Each non-blank line is one OTLP JSON `ExportTraceServiceRequest` (`{"resourceSpans": [...]}`). A line
that does not parse is reported with its line number and skipped; every good span is kept,
including the good spans of a line whose other spans have unusable ids. Rows are buffered and
written as segments of about `batch_spans` spans, streaming, so memory stays flat whatever the file
size. Files ending in `.gz` are read through gzip. Lines must fit in `max_line_bytes`.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pyarrow as pa

from pipeline.otlp import OTLPDecodeError, request_to_table
from pipeline.otlp_json import parse_json
from pipeline.storage import DataDir

MAX_REPORTED = 50


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that could not be imported, or whose spans were partly rejected."""

    path: str
    line: int
    message: str


@dataclass(slots=True)
class ImportResult:
    """Totals of an import."""

    lines: int = 0
    spans: int = 0
    rejected_spans: int = 0
    bad_lines: int = 0
    problems: list[BadLine] = field(default_factory=list)
    segments: list[Path] = field(default_factory=list)

    def report(self, problem: BadLine) -> None:
        """Keep the first MAX_REPORTED problems."""
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(problem)


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _lines(handle: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line or None if over the limit, bytes consumed)."""
    number = 0
    while True:
        line = handle.readline(max_line_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            consumed = len(line)
            while line and not line.endswith(b"\n"):  # skip the rest of the oversized line
                line = handle.readline(1 << 20)
                consumed += len(line)
            yield number, None, consumed
            continue
        yield number, line, len(line)


def import_files(
    data: DataDir,
    paths: list[Path],
    *,
    batch_spans: int = 100_000,
    max_line_bytes: int = 64 * 1024 * 1024,
    progress: Callable[[Path, int], None] | None = None,
) -> ImportResult:
    """Import OTLP JSON-lines files; `progress(path, bytes_consumed)` is called as lines are read."""
    result = ImportResult()
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            result.segments += data.write_segment(pa.concat_tables(pending), prefix="import")
        pending = []
        pending_rows = 0

    for path in paths:
        with _open(path) as handle:
            for number, line, consumed in _lines(handle, max_line_bytes):
                if progress is not None:
                    progress(path, consumed)
                if line is None:
                    result.bad_lines += 1
                    result.report(BadLine(str(path), number, f"line is longer than {max_line_bytes} bytes"))
                    continue
                if not line.strip():
                    continue
                result.lines += 1
                try:
                    request, validation = parse_json(line)
                except OTLPDecodeError as exc:
                    result.bad_lines += 1
                    result.report(BadLine(str(path), number, str(exc)))
                    continue
                batch = request_to_table(request, time.time_ns())
                if validation.rejected:
                    result.rejected_spans += validation.rejected
                    result.report(BadLine(str(path), number, f"spans rejected: {validation.message()}"))
                if batch.accepted:
                    pending.append(batch.table)
                    pending_rows += batch.accepted
                    result.spans += batch.accepted
                if pending_rows >= batch_spans:
                    flush()
    flush()
    return result
