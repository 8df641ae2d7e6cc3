"""Ingest's write-ahead log: accepted OTLP requests, fsync'd before ingest answers 200.

Files: `DIR/wal/wal-<time_ns>-<random>.log`, each a sequence of records::

    u32 length | u32 crc32(payload) | u64 ingested_at_ns | payload (ExportTraceServiceRequest protobuf)

One writer thread appends. Requests hand it a payload and wait; the thread writes everything that
is waiting, fsyncs once and then releases all of them (group commit: concurrent requests share one
fsync). A file is sealed (closed, handed to the roll-up) when it reaches `max_file_bytes` or has been
open `max_file_age_s`. The active file is flock'ed, so a second process replaying left-over files
never touches a live one.

A crash can leave a torn last record; it was never acknowledged (the fsync had not returned), so
`read_records` stops at the first incomplete or corrupt record.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from pipeline.storage import fsync_dir

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<IIQ")
#: A payload larger than this is not a record we wrote (guards replay against garbage lengths).
MAX_RECORD_BYTES = 1 << 30
SUFFIX = ".log"


class WALClosedError(RuntimeError):
    """The log is shut down; the request was not written."""


@dataclass(frozen=True, slots=True)
class Record:
    """One accepted request: when it was accepted and its protobuf bytes."""

    ingested_at_ns: int
    payload: bytes


def wal_files(directory: Path) -> list[Path]:
    """WAL files in a directory, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"wal-*{SUFFIX}"))


def read_records(path: Path) -> Iterator[Record]:
    """Records of a WAL file, in order, up to the first torn or corrupt one."""
    with open(path, "rb") as log:
        data = log.read()
    offset = 0
    while offset + HEADER.size <= len(data):
        length, crc, ingested_at_ns = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + length
        if length > MAX_RECORD_BYTES or end > len(data):
            logger.warning("%s: torn record at byte %d (not acknowledged; ignored)", path, offset)
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            logger.warning("%s: corrupt record at byte %d (not acknowledged; ignored)", path, offset)
            return
        yield Record(ingested_at_ns, payload)
        offset = end


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[bool]:
    """Try to lock a WAL file exclusively without waiting; yields whether we hold it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class WriteAheadLog:
    """Group-committing append-only log. `append` returns a Future done once the record is durable."""

    def __init__(
        self,
        directory: Path,
        *,
        on_sealed: Callable[[Path], None],
        fsync: bool = True,
        max_file_bytes: int = 32 * 1024 * 1024,
        max_file_age_s: float = 2.0,
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.max_file_bytes = max_file_bytes
        self.max_file_age_s = max_file_age_s
        self._on_sealed = on_sealed
        self._pending: list[tuple[bytes, Future[int]]] = []
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._fd: int | None = None
        self._path: Path | None = None
        self._file_bytes = 0
        self._opened_at = 0.0
        self.fsyncs = 0
        self.records = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="callscope-wal", daemon=True)
        self._thread.start()

    @property
    def pending_bytes(self) -> int:
        """Bytes handed to `append` and not yet written."""
        return self._pending_bytes

    @property
    def active_file_bytes(self) -> int:
        """Size of the file being appended to (not yet sealed)."""
        return self._file_bytes

    def append(self, payload: bytes) -> Future[int]:
        """Queue a record; the Future gives its ingested_at_ns once it is on disk (fsync'd)."""
        future: Future[int] = Future()
        with self._cond:
            if self._closing:
                raise WALClosedError("the write-ahead log is closed (ingest is shutting down)")
            self._pending.append((payload, future))
            self._pending_bytes += len(payload)
            self._cond.notify()
        return future

    def close(self) -> None:
        """Write what is pending, seal the current file and stop the writer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # ---- writer thread -----------------------------------------------------------------------

    def _open(self) -> None:
        name = f"wal-{time.time_ns():020d}-{secrets.token_hex(4)}{SUFFIX}"
        self._path = self.directory / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        if self.fsync:
            fsync_dir(self.directory)
        self._file_bytes = 0
        self._opened_at = time.monotonic()

    def _seal(self) -> None:
        if self._fd is None or self._path is None:
            return
        os.close(self._fd)  # data was fsync'd at each commit; closing releases the flock
        path = self._path
        self._fd = None
        self._path = None
        self._file_bytes = 0
        self._on_sealed(path)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    timeout = None
                    if self._fd is not None:
                        timeout = max(0.0, self._opened_at + self.max_file_age_s - time.monotonic())
                        if timeout == 0.0:
                            break
                    self._cond.wait(timeout)
                batch = self._pending
                self._pending = []
                self._pending_bytes = 0
                closing = self._closing
            if batch:
                self._commit(batch)
            if self._fd is not None and (
                closing
                or self._file_bytes >= self.max_file_bytes
                or time.monotonic() - self._opened_at >= self.max_file_age_s
            ):
                self._seal()
            if closing and not batch:
                with self._cond:
                    if not self._pending:
                        return

    def _commit(self, batch: list[tuple[bytes, Future[int]]]) -> None:
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            ingested_at_ns = time.time_ns()
            parts: list[bytes] = []
            for payload, _future in batch:
                parts.append(HEADER.pack(len(payload), zlib.crc32(payload), ingested_at_ns))
                parts.append(payload)
            data = b"".join(parts)
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync:
                os.fdatasync(self._fd)
                self.fsyncs += 1
            self._file_bytes += len(data)
            self.records += len(batch)
        except OSError as exc:  # disk full, I/O error: fail these requests, keep serving
            logger.error("write-ahead log append failed: %s", exc)
            for _payload, future in batch:
                future.set_exception(exc)
            with contextlib.suppress(OSError):
                self._seal()
            return
        for _payload, future in batch:
            future.set_result(ingested_at_ns)
