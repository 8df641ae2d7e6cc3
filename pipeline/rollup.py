"""Roll sealed write-ahead-log files into Parquet segments, off the request path.

`roll_wal_file` decodes every record of one WAL file into span rows and writes them as segments
named after the file (`wal-<time_ns>-<random>.parquet` in each date partition), then deletes the WAL
file. The names are deterministic, so rolling the same file twice (a crash after the segments were
written but before the WAL file was deleted, or two processes replaying at once) rewrites identical
files instead of duplicating rows: acknowledged spans are stored exactly once.

`Roller` is the background worker ingest uses: a thread that rolls sealed files in order, either
itself or in a worker process (`processes=1`) so decoding uses a second core.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.otlp import OTLPDecodeError, decode_protobuf
from pipeline.storage import DataDir, fsync_dir
from pipeline.wal import claimed, read_records, wal_files

logger = logging.getLogger(__name__)


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
    for record in read_records(path):
        try:
            batch = decode_protobuf(record.payload, record.ingested_at_ns, parsed_before=True)
        except OTLPDecodeError as exc:  # validated before it was logged; only a bug gets here
            logger.error("%s: undecodable record skipped: %s", path, exc)
            continue
        if batch.rejected:  # validated before it was logged (JSON bodies: ids only)
            logger.warning(
                "%s: %d unusable spans dropped: %s", path, batch.rejected, batch.rejection_message()
            )
        if batch.accepted:
            tables.append(batch.table)
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


def replay(data: DataDir) -> list[RollResult]:
    """Roll every WAL file left behind by a crash (skipping files a live process holds)."""
    results = []
    for path in wal_files(data.wal_dir):
        with claimed(path) as mine:
            if mine:
                results.append(roll_wal_file(str(data.path), str(path), data.fsync))
    return results


class Roller:
    """Background roll-up of sealed WAL files into segments, in sealing order."""

    def __init__(self, data: DataDir, *, processes: int = 0) -> None:
        self.data = data
        self._queue: queue.Queue[tuple[Path, int] | None] = queue.Queue()
        self._pool: ProcessPoolExecutor | None = None
        if processes > 0:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        self._lock = threading.Lock()
        self.backlog_bytes = 0
        self.rolled_spans = 0
        self.rolled_files = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="callscope-rollup", daemon=True)
        self._thread.start()

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
        """Roll everything queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            path, size = item
            try:
                if self._pool is not None:
                    result = self._pool.submit(roll_wal_file, str(self.data.path), str(path), self.data.fsync)
                    rolled = result.result()
                else:
                    rolled = roll_wal_file(str(self.data.path), str(path), self.data.fsync)
                self.rolled_spans += rolled.spans
                self.rolled_files += 1
                if rolled.segments:
                    self.data.refresh_views_if_changed()
            except Exception:  # the WAL file stays; it is replayed at the next start. Keep serving.
                self.failures += 1
                logger.exception("rolling %s into segments failed; it will be replayed at restart", path)
            finally:
                with self._lock:
                    self.backlog_bytes -= size
