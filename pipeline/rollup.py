"""Roll sealed write-ahead-log files into Parquet segments, off the request path.

`roll_wal_file` decodes every record of one WAL file into span rows (a few records per C walk:
`pipeline.otlp.fast_records_to_table`) and writes them as segments
named after the file (`wal-<time_ns>-<random>.parquet` in each date partition), then deletes the WAL
file. The names are deterministic, so rolling the same file twice (a crash after the segments were
written but before the WAL file was deleted, or two processes replaying at once) rewrites identical
files instead of duplicating rows: acknowledged spans are stored exactly once.

`Roller` is the background worker ingest uses: a thread that rolls sealed files in order, either
itself or in a worker process (`processes=1`) so decoding uses a second core. A file whose roll-up
fails (a full disk, an I/O error) stays in the log and is tried again every `retry_s` seconds, so
its acknowledged spans reach the segments once the disk recovers, without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.otlp import OTLPDecodeError, decode_protobuf, fast_records_to_table
from pipeline.storage import DataDir, fsync_dir
from pipeline.wal import Record, claimed, read_records, wal_files

logger = logging.getLogger(__name__)

#: Seconds between attempts to roll a WAL file whose roll-up failed.
RETRY_S = 5.0
#: Protobuf bytes decoded per C walk (`fast_records_to_table`): a few requests share the per-call
#: Arrow work, while the walk's output buffers stay small enough for the CPU caches (a whole 32 MiB
#: file in one walk is slower than request by request).
WALK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class RollResult:
    """What rolling one WAL file produced."""

    wal_path: Path
    spans: int
    segments: tuple[Path, ...]


def segment_name_for(wal_path: Path) -> str:
    """The segment file name that rolling `wal_path` produces (same in every date partition)."""
    return wal_path.name.removesuffix(".log") + ".parquet"


def roll_wal_file(data_path: str, wal_path: str, fsync: bool = True) -> RollResult:
    """Decode a sealed WAL file into segments, then delete it. Idempotent (see module doc).

    Takes plain strings so it can run in a worker process.
    """
    data = DataDir(data_path, fsync=fsync)
    path = Path(wal_path)
    tables: list[pa.Table] = []
    for records in _walk_groups(read_records(path)):
        # One C walk per group (the per-request Arrow work once); else record by record.
        walked = fast_records_to_table(records)
        if walked is None:
            tables += _decode_one_by_one(path, records)
        elif walked.accepted:
            tables.append(walked.table)
    segments: list[Path] = []
    spans = 0
    if tables:
        table = pa.concat_tables(tables)
        spans = table.num_rows
        segments = data.write_segment(table, name=segment_name_for(path), refresh=False)
    with contextlib.suppress(FileNotFoundError):  # another process rolled it meanwhile
        os.unlink(path)
    if fsync:
        fsync_dir(path.parent)
    return RollResult(path, spans, tuple(segments))


def _walk_groups(records: Iterable[Record]) -> Iterator[list[tuple[bytes, int]]]:
    """Consecutive records, about WALK_BYTES of protobuf per group."""
    group: list[tuple[bytes, int]] = []
    size = 0
    for record in records:
        if group and size + len(record.payload) > WALK_BYTES:
            yield group
            group, size = [], 0
        group.append((record.payload, record.ingested_at_ns))
        size += len(record.payload)
    if group:
        yield group


def _decode_one_by_one(path: Path, records: list[tuple[bytes, int]]) -> list[pa.Table]:
    tables = []
    for payload, ingested_at_ns in records:
        try:
            batch = decode_protobuf(payload, ingested_at_ns, parsed_before=True)
        except OTLPDecodeError as exc:  # validated before it was logged; only a bug gets here
            logger.error("%s: undecodable record skipped: %s", path, exc)
            continue
        if batch.rejected:  # validated before it was logged (ids and times); only a bug gets here
            logger.warning(
                "%s: %d unusable spans dropped: %s", path, batch.rejected, batch.rejection_message()
            )
        if batch.accepted:
            tables.append(batch.table)
    return tables


def replay(data: DataDir) -> list[RollResult]:
    """Roll every WAL file left behind by a crash (skipping files a live process holds)."""
    results = []
    for path in wal_files(data.wal_dir):
        with claimed(path) as mine:
            if mine:
                results.append(roll_wal_file(str(data.path), str(path), data.fsync))
    return results


def _exit_with_parent() -> None:
    """Pool worker initializer: exit as soon as the ingest process is gone, even after a kill -9.

    A spawn worker holds both ends of its call queue, so it never sees EOF when its parent dies;
    without this watch it (and multiprocessing's resource tracker) would outlive a killed ingest.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="callscope-parent-watch", daemon=True).start()


class Roller:
    """Background roll-up of sealed WAL files into segments, in sealing order."""

    def __init__(self, data: DataDir, *, processes: int = 0, retry_s: float = RETRY_S) -> None:
        self.data = data
        self.retry_s = retry_s
        self._queue: queue.Queue[tuple[Path, int] | None] = queue.Queue()
        self._pool: ProcessPoolExecutor | None = None
        if processes > 0:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            self._pool = ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent
            )
        self._lock = threading.Lock()
        self.backlog_bytes = 0
        self.rolled_spans = 0
        self.rolled_files = 0
        self.failures = 0
        #: WAL files whose roll-up failed, tried again at `_retry_at` (roller thread only).
        self._failed: set[Path] = set()
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="callscope-rollup", daemon=True)
        self._thread.start()

    @property
    def waiting_retry(self) -> int:
        """WAL files whose roll-up failed and will be tried again."""
        return len(self._failed)

    def submit(self, wal_path: Path) -> None:
        """Queue a sealed WAL file."""
        try:
            size = wal_path.stat().st_size
        except FileNotFoundError:
            return
        with self._lock:
            self.backlog_bytes += size
        self._queue.put((wal_path, size))

    def close(self) -> None:
        """Roll everything queued (and once more what failed), then stop."""
        self._queue.put(None)
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            timeout = max(0.0, self._retry_at - time.monotonic()) if self._failed else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                pass  # time to retry what failed
            else:
                if item is None:
                    self._retry_failed()  # a last try; what still fails is replayed at the next start
                    return
                self._roll(*item)
            if self._failed and time.monotonic() >= self._retry_at:
                self._retry_failed()

    def _retry_failed(self) -> None:
        for path in sorted(self._failed):
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # rolled by another process (a replay) meanwhile
                self._failed.discard(path)
                continue
            with self._lock:
                self.backlog_bytes += size
            self._roll(path, size)
        self._retry_at = time.monotonic() + self.retry_s

    def _roll(self, path: Path, size: int) -> None:
        try:
            if self._pool is not None:
                result = self._pool.submit(roll_wal_file, str(self.data.path), str(path), self.data.fsync)
                rolled = result.result()
            else:
                rolled = roll_wal_file(str(self.data.path), str(path), self.data.fsync)
            self._failed.discard(path)
            self.rolled_spans += rolled.spans
            self.rolled_files += 1
            if rolled.segments:
                self.data.refresh_views_if_changed()
        except Exception as exc:  # the WAL file stays and is tried again; keep serving
            self.failures += 1
            if path in self._failed:
                logger.warning("rolling %s into segments failed again: %s", path, exc)
            else:
                if not self._failed:
                    self._retry_at = time.monotonic() + self.retry_s
                self._failed.add(path)
                logger.exception(
                    "rolling %s into segments failed; trying again every %g s (and at restart)",
                    path,
                    self.retry_s,
                )
        finally:
            with self._lock:
                self.backlog_bytes -= size
