"""Compaction: merge a date partition's small segments into one, dropping duplicate spans.

For each `DIR/spans/date=D/` with at least `min_files` small segments (under `small_bytes`):

1. DuckDB reads those segments, keeps one row per (trace_id, span_id) -- the latest ingested, the
   same rule as the `spans` view -- sorts by (trace_id, start_ns) and writes one Parquet file into
   `DIR/.staging/` (outside every view's glob), which is fsync'd.
2. Under the data directory's exclusive lock (segment writers hold it shared while renaming), a
   new partition directory is assembled in staging: the merged file plus hard links to every file of
   the partition that was not merged (e.g. a segment that arrived meanwhile). The new directory and
   `date=D` are then swapped in one `renameat2(RENAME_EXCHANGE)` call, so a reader's glob sees
   either all the inputs or the merged file, never both and never neither.
3. The old directory (now in staging) is deleted.

A crash at any point loses nothing: before the swap, the inputs are untouched and the staging
leftovers are deleted at the next compaction or ingest start; after it, the merged file holds every
input row. Where `RENAME_EXCHANGE` is not available (not Linux, or a filesystem without it) the
merged file is renamed in first and the inputs deleted after, so readers of `spans` (deduplicated)
still count each span once; `spans_raw` may then briefly show both.

Segments still backed by a write-ahead-log file (a roll-up in progress) are never merged: a replay
would rewrite them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from pipeline.schema import MINIVOICE_COLUMN
from pipeline.storage import (
    COMPRESSION,
    DataDir,
    Segment,
    fsync_dir,
    new_file_name,
    spans_dedup_sql,
)

if TYPE_CHECKING:
    import duckdb

AT_FDCWD = -100
RENAME_EXCHANGE = 1 << 1
MiB = 1024 * 1024


class CompactionBusyError(RuntimeError):
    """Another process is compacting this data directory."""


@dataclass(slots=True)
class PartitionResult:
    """One merged partition."""

    date: str
    inputs: int
    rows_in: int
    rows_out: int
    merged: Path

    @property
    def duplicates_dropped(self) -> int:
        """Rows removed as duplicates of a (trace_id, span_id) already kept."""
        return self.rows_in - self.rows_out


@dataclass(slots=True)
class CompactionResult:
    """What a compaction pass did."""

    partitions: list[PartitionResult] = field(default_factory=list)

    @property
    def files_merged(self) -> int:
        """Input segments replaced."""
        return sum(p.inputs for p in self.partitions)

    @property
    def duplicates_dropped(self) -> int:
        """Duplicate span rows removed."""
        return sum(p.duplicates_dropped for p in self.partitions)


def _libc_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name, use_errno=True).renameat2
    except AttributeError:
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _libc_renameat2()


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False if unsupported."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE)
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem can't
        return False
    raise OSError(errno, os.strerror(errno), str(first))


def clean_staging(data: DataDir) -> None:
    """Delete what an interrupted compaction left in `DIR/.staging` (never needed: see module doc)."""
    if data.staging_dir.is_dir():
        shutil.rmtree(data.staging_dir, ignore_errors=True)


@contextlib.contextmanager
def _compaction_lock(data: DataDir) -> Iterator[None]:
    data.path.mkdir(parents=True, exist_ok=True)
    fd = os.open(data.path / ".compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompactionBusyError(f"another process is compacting {data.path}") from None
        yield
    finally:
        os.close(fd)


def _mergeable(data: DataDir, segments: list[Segment], small_bytes: int) -> list[Segment]:
    result = []
    for segment in segments:
        if segment.size_bytes >= small_bytes:
            continue
        stem = segment.path.name.removesuffix(".parquet")
        if stem.startswith("wal-") and (data.wal_dir / f"{stem}.log").exists():
            continue  # its WAL file is still being rolled: a replay would rewrite it
        result.append(segment)
    return result


def compact(data: DataDir, *, min_files: int = 2, small_bytes: int = 64 * MiB) -> CompactionResult:
    """Merge each date partition's small segments (see module doc). Raises CompactionBusyError."""
    import duckdb

    result = CompactionResult()
    with _compaction_lock(data):
        clean_staging(data)
        days = sorted({segment.date for segment in data.segments()})
        batches = [
            (day, group)
            for day in days
            for group in _by_layout(_mergeable(data, data.segments(day), small_bytes))
        ]
        for day, inputs in batches:
            if len(inputs) < max(min_files, 2):
                continue
            data.staging_dir.mkdir(parents=True, exist_ok=True)
            merged_name = new_file_name("cmp")
            staged = data.staging_dir / merged_name
            files = "[" + ", ".join(_sql_string(str(s.path)) for s in inputs) + "]"
            source = f"read_parquet({files}, union_by_name=true, hive_partitioning=false)"
            target = _sql_string(str(staged))
            with duckdb.connect() as con:
                rows_in = _count(con, source)
                con.execute(
                    f"COPY ({spans_dedup_sql(source)} ORDER BY trace_id, start_ns) TO {target} "
                    f"(FORMAT parquet, COMPRESSION {COMPRESSION}, ROW_GROUP_SIZE 131072)"
                )
                rows_out = _count(con, f"read_parquet({target})")
            with open(staged, "rb") as handle:
                os.fsync(handle.fileno())
            merged = _swap_in(data, day, staged, [s.path for s in inputs])
            result.partitions.append(PartitionResult(day, len(inputs), rows_in, rows_out, merged))
        clean_staging(data)
    return result


def _by_layout(segments: list[Segment]) -> list[list[Segment]]:
    """Segments with the typed `minivoice` column, and those without (older, or root spans), apart.

    Merged together, the older rows would get a null `minivoice` in a file that has the column,
    and readers take such a file as filled (they skip parsing its JSON attributes).
    """
    typed: list[Segment] = []
    untyped: list[Segment] = []
    for segment in segments:
        (typed if MINIVOICE_COLUMN in pq.read_schema(segment.path).names else untyped).append(segment)
    return [group for group in (typed, untyped) if group]


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _count(con: duckdb.DuckDBPyConnection, source: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {source}").fetchone()
    return int(row[0]) if row else 0


def _swap_in(data: DataDir, day: str, staged: Path, inputs: list[Path]) -> Path:
    partition = data.partition_dir(day)
    merged = partition / staged.name
    replaced = set(inputs)
    new_dir = data.staging_dir / f"new-date={day}-{time.time_ns()}"
    with data.partition_lock(exclusive=True):
        new_dir.mkdir()
        os.link(staged, new_dir / staged.name)
        for path in partition.glob("*.parquet"):
            if path not in replaced:
                os.link(path, new_dir / path.name)
        fsync_dir(new_dir)
        if exchange(new_dir, partition):
            fsync_dir(partition.parent)
            fsync_dir(data.staging_dir)
            shutil.rmtree(new_dir, ignore_errors=True)  # the old partition, now swapped out
            return merged
        # No atomic exchange here: merged first, then the inputs (the spans view deduplicates).
        shutil.rmtree(new_dir, ignore_errors=True)
        os.rename(staged, merged)
        fsync_dir(partition)
        for path in inputs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        fsync_dir(partition)
        return merged
