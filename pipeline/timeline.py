"""`callscope build`: span segments in, `calls` / `unattributed_spans` out (`call_events` is a
view over the spans, `pipeline.tables`).

The I/O edge around the pure core (`pipeline.facts`, `pipeline.rules`, `pipeline.verdicts`): it
runs the same SQL over Parquet segments with DuckDB, keeps the per-call facts between runs, and
writes the output tables (layout in `pipeline.tables`).

State, private to the builder, in `DIR/_timeline/state.duckdb` (never read by anyone else; the
DuckDB file lock makes a second concurrent builder fail with a clear message):

- `facts`: the mergeable facts of every call;
- `span_keys`: the key of every span counted (an incremental step drops spans already counted);
- `verdicts`: each call's current verdict, `is_final`, and when it must be re-evaluated without
  new spans (`next_check_ns`);
- `root_stored`, `root_exported`: per call, the verdict of the last root span written to our span
  store and exported to the OTLP endpoints (tracked apart, so a failing endpoint never re-writes
  the store);
- `processed_files`, `unattributed_keys`, `meta` (sequence number, ingest watermark, config).

A full build reads every segment (but the pipeline's own root span segments). An incremental step
(`--follow`, or `build` when state exists) reads only segment files it has not processed, and of
those only rows ingested after the watermark minus `margin` (a compacted file re-packs rows already
counted; a segment renamed into place late holds rows ingested a little before the watermark).
Rows whose span key was already counted are dropped (OTLP retries, compaction), the new spans'
facts merge into the stored facts of the calls they touch, and only those calls, plus calls whose
grace or settle time has passed, are re-evaluated and written as a delta. Outputs are written
before the state commits, under names derived from the step's sequence number, so a crash between
the two is repaired by the next run overwriting the same files.

Where a full build's time goes, and what was measured to get there: docs/benchmarks.md, "Pipeline".
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from pipeline import facts as facts_mod
from pipeline import tables
from pipeline.rules import FAILURE_VERDICTS, RulesConfig
from pipeline.schema import MINIVOICE_COLUMN
from pipeline.settings import Settings
from pipeline.storage import COMPRESSION, COMPRESSION_LEVEL, DataDir, fsync_dir
from pipeline.verdicts import INTERNAL_COLUMNS, UNATTRIBUTED_SQL, calls_sql

if TYPE_CHECKING:
    import duckdb

    from pipeline.rootspan import RootSpanEmitter

logger = logging.getLogger(__name__)

STATE_DIR = "_timeline"
STATE_DB = "state.duckdb"
LOCK_FILE = ".lock"
STATE_FORMAT = "2"
ROOT_TABLES = ("root_stored", "root_exported")
#: Rows of a new segment ingested this long before the watermark are taken as already counted.
DEFAULT_MARGIN_NS = 10 * 60 * 1_000_000_000
#: Consolidate `calls` deltas into a new base past this many delta rows (or DELTA_FILES_MAX files).
DELTA_ROWS_MIN = 200_000
DELTA_FILES_MAX = 64
ROW_GROUP_SIZE = 131_072
#: `calls` row groups: a call's row is read whole, so a lookup by call id reads one row group of
#: every column (at 1M calls: 18 ms with 32k rows, 30 ms with 128k; the file is 14% smaller too).
CALLS_ROW_GROUP_SIZE = 32_768
#: DuckDB's memory for a build; beyond it, it spills to DIR/_timeline/tmp (default 80% of RAM).
DEFAULT_MEMORY_LIMIT = "1700MB"
#: File name prefix of the pipeline's own root span segments (`pipeline.rootspan`): nothing in
#: them is built from, so a full build does not read them.
ROOT_SEGMENT_PREFIX = "root-"
#: What the `verdicts` state table keeps of each evaluated call (`calls_sql` columns).
VERDICT_COLUMNS = ("call_id", "verdict", "is_final", "next_check_ns")
#: Columns of an evaluated call that a root span reads (`pipeline.rootspan.root_rows_sql`).
ROOT_COLUMNS = (
    "call_id", "trace_id", "root_span_id", "verdict", "failure_stage", "reason", "next_step", "is_final",
    "first_activity_ns", "last_activity_ns", "customer_id", "application_id", "direction", "call_status",
)  # fmt: skip


class TimelineError(RuntimeError):
    """The build cannot run as asked (another build holds the state, unreadable data, ...)."""


@dataclass(slots=True)
class BuildSummary:
    """What one build or incremental step did."""

    mode: str
    seq: int = 0
    new_files: int = 0
    spans: int = 0
    duplicate_spans: int = 0
    calls_evaluated: int = 0
    calls_total: int = 0
    unattributed: int = 0
    unattributed_total: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    root_spans: int = 0
    root_span_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """A human summary, a few lines."""
        if self.mode == "idle":
            return [f"no new spans; {self.calls_total} calls"]
        out = [
            f"{self.mode} build #{self.seq}: {self.spans} new spans from {self.new_files} segment files, "
            f"{self.calls_evaluated} calls evaluated ({self.calls_total} in all) in {self.seconds:.2f} s"
        ]
        if self.verdicts:
            failures = sum(n for v, n in self.verdicts.items() if v in FAILURE_VERDICTS)
            parts = ", ".join(f"{v} {n}" for v, n in sorted(self.verdicts.items(), key=lambda kv: -kv[1]))
            out.append(f"verdicts of the evaluated calls: {parts} ({failures} failures)")
        if self.duplicate_spans:
            out.append(f"{self.duplicate_spans} duplicate span rows (OTLP retries) counted once")
        out.append(
            f"{self.unattributed} new spans without a call id ({self.unattributed_total} in all): "
            "see the unattributed_spans table"
        )
        if self.root_spans or self.root_span_errors:
            out.append(f"{self.root_spans} minivoice.call root spans emitted")
        out.extend(f"root span export failed: {e}" for e in self.root_span_errors)
        return out


def copy_atomic(
    con: duckdb.DuckDBPyConnection,
    query: str,
    path: Path,
    *,
    fsync: bool = True,
    row_group_size: int = ROW_GROUP_SIZE,
) -> Path:
    """COPY a query's rows to a Parquet file atomically: a hidden temp name in the same directory
    (no view's glob matches it), fsync, rename, fsync of the directory. DuckDB writes it in
    parallel and streams it: the rows never pass through Python."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        con.execute(
            f"COPY ({query}) TO '{tmp}' (FORMAT parquet, COMPRESSION {COMPRESSION}, "
            f"COMPRESSION_LEVEL {COMPRESSION_LEVEL}, ROW_GROUP_SIZE {row_group_size})"
        )
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors `Timeline.follow` survives (the step is tried again at the next tick): I/O errors
    (OSError: a full disk, a missing or unreadable file) and DuckDB's I/O, memory and fatal errors
    (a fatal error invalidates the connection; the next step opens a new one)."""
    import duckdb

    return (OSError, duckdb.IOException, duckdb.OutOfMemoryException, duckdb.FatalException)


def segment_vanished(exc: BaseException) -> bool:
    """Whether `exc` says a file listed a moment ago is gone (compaction replaced it)."""
    import duckdb

    if isinstance(exc, FileNotFoundError):
        return True
    message = str(exc)
    return isinstance(exc, duckdb.IOException) and (
        "No files found" in message or "No such file" in message or "Cannot open file" in message
    )


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The first column of the first row (None without rows). Reads the result to its end, which
    DuckDB requires before the connection runs anything else."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def _split_by_minivoice_column(paths: list[str]) -> tuple[list[str], list[str]]:
    """Segments with the promoted `minivoice` column, and those without (their rows parse JSON)."""
    typed: list[str] = []
    untyped: list[str] = []
    for path in paths:
        (typed if MINIVOICE_COLUMN in pq.read_schema(path).names else untyped).append(path)
    return typed, untyped


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _file_seq(path: Path) -> int | None:
    """The sequence number in an output file name (`base-000000000012.parquet` -> 12)."""
    stem = path.stem
    for prefix in ("base-", "delta-"):
        if stem.startswith(prefix):
            digits = stem[len(prefix) :].split("-")[0]
            if digits.isdigit():
                return int(digits)
    return None


class Timeline:
    """The builder of one data directory. Not thread-safe; one per process (the state is locked)."""

    def __init__(
        self,
        data: DataDir,
        config: RulesConfig | None = None,
        *,
        emitter: RootSpanEmitter | None = None,
        margin_ns: int = DEFAULT_MARGIN_NS,
        memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
        threads: int | None = None,
    ) -> None:
        self.data = data
        self.config = config or RulesConfig()
        self.facts_config = facts_mod.FactsConfig(answer_url_timeout_ms=self.config.answer_url_timeout_ms)
        self.emitter = emitter
        self.margin_ns = margin_ns
        self.memory_limit = memory_limit
        self.threads = threads
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock_fd: int | None = None
        self._root_backlog = True

    # ---- paths and connection --------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.data.path / STATE_DIR

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_DB

    def _config_key(self) -> str:
        """What stored facts depend on: the state format, the answer_url timeout, and the facts'
        own definitions (a new version of them means a full rebuild)."""
        import hashlib

        definitions = facts_mod.call_facts_sql("span_rows", self.facts_config)
        digest = hashlib.sha256(definitions.encode()).hexdigest()[:16]
        return f"{STATE_FORMAT}:timeout={self.config.answer_url_timeout_ms}:facts={digest}"

    def _lock(self) -> None:
        """Hold `_timeline/.lock` (flock) while this builder works: one builder per data dir."""
        if self._lock_fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TimelineError(
                f"another `callscope build` is running on {self.data.path} "
                f"({self.state_dir / LOCK_FILE} is locked); stop it or wait for it to finish"
            ) from None
        self._lock_fd = fd

    def _connect(self, path: Path) -> duckdb.DuckDBPyConnection:
        import duckdb

        self._lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise TimelineError(
                    f"another `callscope build` is running on {self.data.path} (its state {path} is locked); "
                    "stop it or wait for it to finish"
                ) from exc
            raise TimelineError(f"cannot open the build state {path}: {exc}") from exc
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = false")
        temp = self.state_dir / "tmp"
        con.execute(f"SET temp_directory = '{temp}'")
        if self.memory_limit:
            con.execute(f"SET memory_limit = '{self.memory_limit}'")
        if self.threads:
            con.execute(f"SET threads = {int(self.threads)}")
        return con

    def _state(self) -> duckdb.DuckDBPyConnection | None:
        """The open state connection, or None when there is no usable state (a full build is due)."""
        if self._con is not None:
            return self._con
        if not self.state_path.exists():
            return None
        con = self._connect(self.state_path)
        try:
            config = _scalar(con, "SELECT value FROM meta WHERE key = 'config'")
        except Exception:  # a state from an older format or a half-made file: rebuild it
            con.close()
            return None
        if config != self._config_key():
            con.close()
            return None
        self._con = con
        return con

    def close(self) -> None:
        """Release the state and the builder lock."""
        self._release_state()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _release_state(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Timeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- public operations -----------------------------------------------------------------

    def build(self, as_of_ns: int | None = None, *, full: bool = False) -> BuildSummary:
        """Bring the outputs up to date: incrementally when state exists, else (or if `full`) fully.

        A segment that vanishes between listing and reading it (background compaction merged it
        into a new file) makes the build start over once, from a fresh listing."""
        as_of_ns = time.time_ns() if as_of_ns is None else as_of_ns
        try:
            return self._build_once(as_of_ns, full=full)
        except Exception as exc:
            if not segment_vanished(exc):
                raise
            logger.info("a segment was removed while the build read it (%s); building again", exc)
            self._recover()
            return self._build_once(as_of_ns, full=full)

    def _build_once(self, as_of_ns: int, *, full: bool) -> BuildSummary:
        if full or self._state() is None:
            return self.full_build(as_of_ns)
        return self.step(as_of_ns)

    def follow(
        self,
        interval: float = 2.0,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], int] = time.time_ns,
        on_step: Callable[[BuildSummary], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        full: bool = False,
    ) -> None:
        """Build (fully if `full`), then apply new spans every `interval` seconds until `stop` is set.

        A step that fails on a transient error (`transient_errors()`: a segment compacted away
        while it was read, a full disk, an unreadable file, DuckDB out of memory) is reported to
        `on_error` (else logged) and tried again at the next tick from the last committed state:
        it never ends the loop. Other errors (a bug, another builder holding the lock) propagate.
        """
        stop = stop or threading.Event()
        transient = transient_errors()
        first = True
        while True:
            started = time.monotonic()
            try:
                summary = self.build(clock(), full=full and first)
            except transient as exc:
                self._recover()
                if on_error is not None:
                    on_error(exc)
                else:
                    logger.warning("build step failed, retrying in %.1f s: %s", interval, exc)
            else:
                if on_step and (first or summary.mode != "idle"):
                    on_step(summary)
                first = False
            if stop.wait(max(0.0, interval - (time.monotonic() - started))):
                return

    def _recover(self) -> None:
        """After a failed step: drop the state connection (DuckDB may have invalidated it; its temp
        tables go with it) and re-check every root span at the next step."""
        if self._con is not None:
            with contextlib.suppress(Exception):  # a connection DuckDB invalidated may refuse to close
                self._con.close()
            self._con = None
        self._root_backlog = True

    # ---- full build ------------------------------------------------------------------------

    def full_build(self, as_of_ns: int) -> BuildSummary:
        """Rebuild facts and every output from all segments."""
        started = time.perf_counter()
        self._lock()
        self._release_state()
        previous = self._previous_root_records()
        seq = self._next_seq_from_files()
        tmp_path = self.state_dir / f".{STATE_DB}.{os.getpid()}.new"
        for leftover in (tmp_path, Path(f"{tmp_path}.wal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        con = self._connect(tmp_path)
        summary = BuildSummary(mode="full", seq=seq)
        try:
            self._create_state_tables(con)
            paths = [str(s.path) for s in self.data.segments()]
            summary.new_files = len(paths)
            inputs = [p for p in paths if not Path(p).name.startswith(ROOT_SEGMENT_PREFIX)]
            if inputs:
                self._full_from_segments(con, inputs, as_of_ns, seq, summary)
            else:
                con.execute(f"CREATE OR REPLACE TEMP TABLE calls_out AS {self._empty_calls_sql()}")
            con.execute("INSERT INTO processed_files SELECT unnest(?::VARCHAR[])", [paths])
            for table, records in previous.items():
                con.register("previous_records", records)
                con.execute(f"INSERT INTO {table} SELECT call_id, verdict FROM previous_records")
                con.unregister("previous_records")
            watermark = _scalar(con, "SELECT coalesce(max(last_ingested_ns), 0) FROM facts")
            self._set_meta(con, seq=seq, watermark=int(watermark or 0))
            # Root spans of the calls this build made final (before the state commits: a crash
            # in between re-emits them, and readers see each span once). Every call was just
            # evaluated: no backlog to look for.
            self._root_backlog = False
            self._emit_root_spans(con, summary, "calls_out")
            summary.calls_total = self._count(con, "verdicts")
            summary.unattributed_total = self._count(con, "unattributed_keys")
            con.execute("CHECKPOINT")
        except BaseException:
            con.close()
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
            raise
        con.close()
        os.replace(tmp_path, self.state_path)
        with contextlib.suppress(FileNotFoundError):
            Path(f"{tmp_path}.wal").unlink()
        self._remove_outputs_before(seq)
        self.data.refresh_views_if_changed()
        summary.seconds = time.perf_counter() - started
        return summary

    def _previous_root_records(self) -> dict[str, Any]:
        """What root spans were emitted, kept across a full rebuild (else they would be re-emitted)."""
        if not self.state_path.exists():
            return {}
        import duckdb

        records: dict[str, Any] = {}
        try:
            with duckdb.connect(str(self.state_path), read_only=True) as old:
                for table in ROOT_TABLES:
                    records[table] = old.sql(f"SELECT call_id, verdict FROM {table}").to_arrow_table()
        except duckdb.Error:
            return {}
        return records

    def _full_from_segments(
        self, con: duckdb.DuckDBPyConnection, paths: list[str], as_of_ns: int, seq: int, summary: BuildSummary
    ) -> None:
        source = f"read_parquet({_sql_list(paths)}, union_by_name=true)"
        typed, untyped = _split_by_minivoice_column(paths)
        # Segments with the promoted column are read straight from the Parquet files (each
        # source's facts read only that source's fields); rows of the others parse their JSON
        # once, into a temporary table that every step below reads.
        parts = []
        if typed:
            parts.append(facts_mod.span_rows_from_files_sql(typed, []))
        if untyped:
            con.execute(f"CREATE TEMP TABLE json_rows AS {facts_mod.span_rows_from_files_sql([], untyped)}")
            parts.append("SELECT * FROM json_rows")
        rows = "(" + "\nUNION ALL BY NAME\n".join(parts) + ")"
        # One source at a time, each into a temporary table, then joined: a single query holds
        # every source's hash table at once and spills under the memory limit (25% more CPU).
        groups = {}
        for group in facts_mod.GROUPS:
            groups[group] = f"facts_{group}"
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE facts_{group} AS "
                f"{facts_mod.group_facts_sql(rows, group, self.facts_config)}"
            )
        con.execute(f"INSERT INTO facts {facts_mod.join_groups_sql(groups, self.facts_config)}")
        for table in groups.values():
            con.execute(f"DROP TABLE {table}")
        # The key of every span counted: the incremental steps drop spans already counted. Keys
        # that repeat are OTLP retries stored twice (until compaction): their calls are recounted.
        con.execute(f"INSERT INTO span_keys SELECT DISTINCT span_key FROM {rows} WHERE call_id IS NOT NULL")
        counted = int(_scalar(con, "SELECT coalesce(sum(span_count), 0) FROM facts") or 0)
        extra = counted - self._count(con, "span_keys")
        summary.spans = counted - extra
        if extra:
            summary.duplicate_spans = extra
            con.execute(
                f"CREATE TEMP TABLE dup_keys AS SELECT span_key FROM {rows} WHERE call_id IS NOT NULL "
                "GROUP BY span_key HAVING count(*) > 1"
            )
            con.execute(
                f"CREATE TEMP TABLE dup_calls AS SELECT DISTINCT call_id FROM {rows} "
                "WHERE span_key IN (SELECT span_key FROM dup_keys) AND call_id IS NOT NULL"
            )
            con.execute(
                f"CREATE TEMP TABLE dup_rows AS SELECT * FROM {rows} "
                "WHERE call_id IN (SELECT call_id FROM dup_calls) "
                "QUALIFY row_number() OVER (PARTITION BY span_key ORDER BY ingested_at_ns, end_ns DESC) = 1"
            )
            con.execute("DELETE FROM facts WHERE call_id IN (SELECT call_id FROM dup_calls)")
            con.execute(f"INSERT INTO facts {facts_mod.call_facts_sql('dup_rows', self.facts_config)}")
        self._evaluate(con, "facts", as_of_ns)
        con.execute(f"INSERT INTO verdicts {self._verdicts_select()}")
        self._write_calls(con, f"base-{seq:012d}.parquet", seq)
        # Spans without a call id: one copy each.
        unattributed = UNATTRIBUTED_SQL.format(source=source) + (
            " QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY ingested_at) = 1"
        )
        con.execute(f"CREATE TEMP TABLE unattributed_new AS {unattributed}")
        summary.unattributed = self._count(con, "unattributed_new")
        con.execute("INSERT INTO unattributed_keys SELECT hash(trace_id, span_id) FROM unattributed_new")
        if summary.unattributed:
            self._write(
                con, tables.UNATTRIBUTED, f"base-{seq:012d}.parquet", "SELECT * FROM unattributed_new"
            )
        summary.calls_evaluated = self._count(con, "calls_out")
        summary.verdicts = self._verdict_counts(con)

    # ---- incremental step ------------------------------------------------------------------

    def step(self, as_of_ns: int | None = None) -> BuildSummary:
        """Apply spans of segment files not processed yet, and re-evaluate calls whose time came."""
        as_of_ns = time.time_ns() if as_of_ns is None else as_of_ns
        con = self._state()
        if con is None:
            return self.full_build(as_of_ns)
        started = time.perf_counter()
        processed = {row[0] for row in con.execute("SELECT path FROM processed_files").fetchall()}
        segments = self.data.segments()
        existing = {str(s.path) for s in segments}
        new_paths = [str(s.path) for s in segments if str(s.path) not in processed]
        due = _scalar(
            con,
            "SELECT count(*) FROM verdicts WHERE next_check_ns IS NOT NULL AND next_check_ns <= ?",
            [as_of_ns],
        )
        gone = processed - existing
        if not new_paths and not due:
            if gone:
                self._forget_files(con, gone)
            summary = BuildSummary(mode="idle")
            if self._root_backlog:
                self._emit_root_spans(con, summary)
            summary.calls_total = self._count(con, "verdicts")
            if summary.root_spans or summary.root_span_errors:
                summary.mode = "incremental"
            summary.seconds = time.perf_counter() - started
            return summary

        seq = self._meta_int(con, "seq") + 1
        summary = BuildSummary(mode="incremental", seq=seq, new_files=len(new_paths))
        watermark = self._meta_int(con, "watermark")
        for name in (
            "batch",
            "touched_facts",
            "batch_u",
            "batch_facts",
            "merged",
            "eval_facts",
            "calls_out",
            "unattributed_new",
        ):
            con.execute(f"DROP TABLE IF EXISTS {name}")
        if new_paths:
            source = f"read_parquet({_sql_list(new_paths)}, union_by_name=true)"
            typed, untyped = _split_by_minivoice_column(new_paths)
            rows_sql = facts_mod.span_rows_from_files_sql(
                typed, untyped, where=f"ingested_at_ns > {watermark - self.margin_ns}"
            )
            con.execute(f"CREATE TEMP TABLE batch AS {rows_sql}")
            read = self._count(con, "batch")
            batch_max = _scalar(con, "SELECT max(ingested_at_ns) FROM batch")
            # Already counted (compaction, an OTLP retry), or twice in the batch: keep one copy.
            con.execute(
                "CREATE TEMP TABLE batch_u AS SELECT * FROM batch WHERE call_id IS NULL OR span_key NOT IN "
                "(SELECT span_key FROM span_keys WHERE span_key IN (SELECT span_key FROM batch)) "
                "QUALIFY row_number() OVER (PARTITION BY span_key ORDER BY ingested_at_ns, end_ns DESC) = 1"
            )
            kept = self._count(con, "batch_u")
            summary.duplicate_spans = read - kept
            con.execute(
                f"CREATE TEMP TABLE batch_facts AS {facts_mod.call_facts_sql('batch_u', self.facts_config)}"
            )
            # The stored facts of the calls the new spans touch: read once (the facts table is wide).
            con.execute(
                "CREATE TEMP TABLE touched_facts AS "
                "SELECT * FROM facts WHERE call_id IN (SELECT call_id FROM batch_facts)"
            )
            summary.spans = int(_scalar(con, "SELECT coalesce(sum(span_count), 0) FROM batch_facts") or 0)
            con.execute(
                "CREATE TEMP TABLE merged AS "
                + facts_mod.merge_facts_sql(
                    "(SELECT * FROM touched_facts UNION ALL BY NAME SELECT * FROM batch_facts)",
                    self.facts_config,
                )
            )
            con.execute(
                f"CREATE TEMP TABLE unattributed_new AS {UNATTRIBUTED_SQL.format(source=source)} "
                f"AND ingested_at_ns > {watermark - self.margin_ns} "
                "AND hash(trace_id, span_id) NOT IN (SELECT span_key FROM unattributed_keys) "
                "QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY ingested_at) = 1"
            )
            summary.unattributed = self._count(con, "unattributed_new")
            new_watermark = max(watermark, int(batch_max or 0))
        else:
            con.execute("CREATE TEMP TABLE merged AS SELECT * FROM facts WHERE false")
            new_watermark = watermark
        con.execute(
            "CREATE TEMP TABLE eval_facts AS SELECT * FROM merged UNION ALL BY NAME "
            "SELECT * FROM facts WHERE call_id IN (SELECT call_id FROM verdicts "
            "WHERE next_check_ns IS NOT NULL AND next_check_ns <= ?) "
            "AND call_id NOT IN (SELECT call_id FROM merged)",
            [as_of_ns],
        )
        self._evaluate(con, "eval_facts", as_of_ns)
        summary.calls_evaluated = self._count(con, "calls_out")
        summary.verdicts = self._verdict_counts(con)
        name = f"delta-{seq:012d}.parquet"
        if summary.calls_evaluated:
            self._write_calls(con, name, seq)
        if summary.unattributed:
            self._write(con, tables.UNATTRIBUTED, name, "SELECT * FROM unattributed_new")
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM facts WHERE call_id IN (SELECT call_id FROM merged)")
            con.execute("INSERT INTO facts SELECT * FROM merged")
            con.execute("DELETE FROM verdicts WHERE call_id IN (SELECT call_id FROM calls_out)")
            con.execute(f"INSERT INTO verdicts {self._verdicts_select()}")
            if new_paths:
                con.execute("INSERT INTO span_keys SELECT span_key FROM batch_u WHERE call_id IS NOT NULL")
                con.execute(
                    "INSERT INTO unattributed_keys SELECT hash(trace_id, span_id) FROM unattributed_new"
                )
                con.execute("INSERT INTO processed_files SELECT unnest(?::VARCHAR[])", [new_paths])
            if gone:
                con.execute(
                    "DELETE FROM processed_files WHERE path IN (SELECT unnest(?::VARCHAR[]))", [sorted(gone)]
                )
            self._set_meta(con, seq=seq, watermark=new_watermark)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.data.refresh_views_if_changed()
        summary.calls_total = self._count(con, "verdicts")
        summary.unattributed_total = self._count(con, "unattributed_keys")
        self._emit_root_spans(con, summary, "calls_out")
        self._maybe_consolidate(con)
        summary.seconds = time.perf_counter() - started
        return summary

    # ---- shared pieces ---------------------------------------------------------------------

    def _create_state_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            f"CREATE TABLE facts AS {facts_mod.call_facts_sql(self._empty_rows_sql(), self.facts_config)}"
        )
        con.execute(
            "CREATE TABLE verdicts (call_id VARCHAR, verdict VARCHAR, is_final BOOLEAN, next_check_ns BIGINT)"
        )
        for table in ROOT_TABLES:
            con.execute(f"CREATE TABLE {table} (call_id VARCHAR, verdict VARCHAR)")
        con.execute("CREATE TABLE processed_files (path VARCHAR)")
        con.execute("CREATE TABLE unattributed_keys (span_key UBIGINT)")
        con.execute("CREATE TABLE span_keys (span_key UBIGINT)")
        con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")

    def _empty_rows_sql(self) -> str:
        from pipeline.schema import SPAN_SCHEMA
        from pipeline.storage import empty_select

        return "(" + facts_mod.span_rows_sql(f"({empty_select(SPAN_SCHEMA)})", mode="json") + ")"

    def _empty_calls_sql(self) -> str:
        empty_facts = f"({facts_mod.call_facts_sql(self._empty_rows_sql(), self.facts_config)})"
        return calls_sql(empty_facts, 0, self.config)

    def _evaluate(self, con: duckdb.DuckDBPyConnection, facts_table: str, as_of_ns: int) -> None:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE calls_out AS {calls_sql(facts_table, as_of_ns, self.config)}"
        )

    @staticmethod
    def _verdicts_select() -> str:
        return f"SELECT {', '.join(VERDICT_COLUMNS)} FROM calls_out"

    def _write_calls(self, con: duckdb.DuckDBPyConnection, name: str, seq: int) -> None:
        internal = ", ".join(INTERNAL_COLUMNS)
        self._write(
            con,
            tables.CALLS,
            name,
            f"SELECT * EXCLUDE ({internal}), CAST({seq} AS BIGINT) AS {tables.VERSION_COLUMN} FROM calls_out",
            row_group_size=CALLS_ROW_GROUP_SIZE,
        )

    def _write(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        name: str,
        query: str,
        *,
        row_group_size: int = ROW_GROUP_SIZE,
    ) -> Path:
        """COPY a query's rows to `DIR/<table>/<name>` atomically (hidden temp name, fsync, rename)."""
        path = self.data.table_dir(table) / name
        return copy_atomic(con, query, path, fsync=self.data.fsync, row_group_size=row_group_size)

    def _set_meta(self, con: duckdb.DuckDBPyConnection, *, seq: int, watermark: int) -> None:
        con.execute("DELETE FROM meta")
        con.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [["config", self._config_key()], ["seq", str(seq)], ["watermark", str(watermark)]],
        )

    @staticmethod
    def _meta_int(con: duckdb.DuckDBPyConnection, key: str) -> int:
        value = _scalar(con, "SELECT value FROM meta WHERE key = ?", [key])
        return int(value) if value is not None else 0

    @staticmethod
    def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
        return int(_scalar(con, f"SELECT count(*) FROM {table}") or 0)

    @staticmethod
    def _verdict_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        return {
            v: int(n)
            for v, n in con.execute("SELECT verdict, count(*) FROM calls_out GROUP BY ALL").fetchall()
        }

    def _forget_files(self, con: duckdb.DuckDBPyConnection, gone: set[str]) -> None:
        con.execute("DELETE FROM processed_files WHERE path IN (SELECT unnest(?::VARCHAR[]))", [sorted(gone)])

    def _next_seq_from_files(self) -> int:
        highest = 0
        for table in (tables.CALLS, tables.UNATTRIBUTED):
            directory = self.data.path / table
            if directory.is_dir():
                for path in directory.glob("*.parquet"):
                    highest = max(highest, _file_seq(path) or 0)
        return highest + 1

    def _remove_outputs_before(self, seq: int) -> None:
        """Delete output files a full build at `seq` supersedes (and the points files builds before
        `call_events` became a view wrote)."""
        for table in (tables.CALLS, tables.UNATTRIBUTED):
            directory = self.data.path / table
            if not directory.is_dir():
                continue
            for path in directory.glob("*.parquet"):
                file_seq = _file_seq(path)
                if file_seq is not None and file_seq < seq:
                    path.unlink(missing_ok=True)
        legacy = self.data.path / tables.CALL_EVENTS
        if legacy.is_dir():
            shutil.rmtree(legacy, ignore_errors=True)

    def _maybe_consolidate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Fold `calls` deltas into a new base when they grow (a view over many files is slow)."""
        directory = self.data.path / tables.CALLS
        deltas = sorted(directory.glob("delta-*.parquet"))
        if not deltas:
            return
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in deltas)
        bases = sorted(directory.glob("base-*.parquet"))
        base_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in bases)
        if len(deltas) < DELTA_FILES_MAX and rows < max(DELTA_ROWS_MIN, base_rows // 5):
            return
        self.consolidate(con)

    def consolidate(self, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Rewrite `calls` as one base file (latest row per call)."""
        con = con or self._state()
        if con is None:
            return
        seq = self._meta_int(con, "seq")
        calls_dir = self.data.path / tables.CALLS
        old = sorted(calls_dir.glob("*.parquet"))
        if not old:
            return
        glob = str(calls_dir / "*.parquet")
        latest = tables.calls_view_sql(f"read_parquet('{glob}', union_by_name=true)")
        # The new base keeps the latest version of each row, so it ties with no delta.
        self._write(
            con,
            tables.CALLS,
            f"base-{seq:012d}-c.parquet",
            f"SELECT *, CAST({seq} AS BIGINT) AS {tables.VERSION_COLUMN} FROM ({latest})",
            row_group_size=CALLS_ROW_GROUP_SIZE,
        )
        for path in old:
            if _file_seq(path) is not None and path.name != f"base-{seq:012d}-c.parquet":
                path.unlink(missing_ok=True)

    # ---- root spans ------------------------------------------------------------------------

    def _backlog_rows_sql(self) -> str:
        """SQL: ROOT_COLUMNS of every final call whose latest verdict lacks its root span somewhere
        (a crash between a commit and an emission, a failed export), from the stored calls files."""
        calls_files = f"read_parquet('{self.data.path / tables.CALLS / '*.parquet'}', union_by_name=true)"
        return (
            "(SELECT call_id, trace_id, "
            "substr(sha256('minivoice-call/' || call_id), 33, 16) AS root_span_id, "
            "verdict, failure_stage, reason, next_step, is_final, "
            "epoch_ns(first_seen_at) AS first_activity_ns, epoch_ns(last_seen_at) AS last_activity_ns, "
            "customer_id, application_id, direction, call_status "
            f"FROM ({tables.calls_view_sql(calls_files)}) "
            "WHERE call_id IN (SELECT call_id FROM root_backlog))"
        )

    def _emit_root_spans(
        self, con: duckdb.DuckDBPyConnection, summary: BuildSummary, evaluated: str | None = None
    ) -> None:
        """Emit `minivoice.call` for final calls whose verdict was not emitted yet, or changed.

        `evaluated`: a relation of calls just evaluated (ROOT_COLUMNS), checked against what was
        emitted. With the backlog flag up (the first step of a process: a crash may have come
        between a commit and an emission; after a failed export or step), every final call in
        `verdicts` is checked as well, and the pending ones are read back from the calls files.
        """
        from pipeline.rootspan import RootSpanEmitter

        emitter = self.emitter or RootSpanEmitter(self.data)
        parts = []
        if evaluated is not None:
            parts.append(f"SELECT {', '.join(ROOT_COLUMNS)} FROM {evaluated} WHERE is_final")
        if self._root_backlog:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE root_backlog AS SELECT v.call_id FROM verdicts v "
                "WHERE v.is_final AND (v.verdict IS DISTINCT FROM (SELECT verdict FROM root_stored r "
                "WHERE r.call_id = v.call_id) OR (? AND v.verdict IS DISTINCT FROM (SELECT verdict "
                "FROM root_exported x WHERE x.call_id = v.call_id)))",
                [bool(emitter.endpoints)],
            )
            if evaluated is not None:
                con.execute(f"DELETE FROM root_backlog WHERE call_id IN (SELECT call_id FROM {evaluated})")
            if self._count(con, "root_backlog") and (self.data.path / tables.CALLS).is_dir():
                parts.append(f"SELECT * FROM {self._backlog_rows_sql()}")
            self._root_backlog = False
        if not parts:
            return
        candidates = "(" + " UNION ALL ".join(parts) + ")"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE root_pending AS SELECT c.* FROM {candidates} c "
            "LEFT JOIN root_stored r USING (call_id) WHERE r.verdict IS DISTINCT FROM c.verdict"
        )
        pending = self._count(con, "root_pending")
        if pending:
            paths = emitter.store(con, "root_pending", time.time_ns())
            summary.root_spans = pending
            self._record(con, "root_stored", "SELECT call_id, verdict FROM root_pending")
            # Our own segments hold nothing to build from: never read them back.
            con.execute("INSERT INTO processed_files SELECT unnest(?::VARCHAR[])", [[str(p) for p in paths]])
        if not emitter.endpoints:
            return
        rows = (
            con.sql(
                f"SELECT c.* FROM {candidates} c LEFT JOIN root_exported r USING (call_id) "
                "WHERE r.verdict IS DISTINCT FROM c.verdict"
            )
            .to_arrow_table()
            .to_pylist()
        )
        if not rows:
            return
        outcome = emitter.export(rows)
        summary.root_span_errors.extend(outcome.errors)
        if len(outcome.exported) < len(rows):
            self._root_backlog = True  # retry every pending call at a later step
        if outcome.exported:
            sent = {row["call_id"]: row["verdict"] for row in rows}
            con.execute(
                "CREATE OR REPLACE TEMP TABLE just_exported AS SELECT unnest(?::VARCHAR[]) AS call_id, "
                "unnest(?::VARCHAR[]) AS verdict",
                [outcome.exported, [sent[c] for c in outcome.exported]],
            )
            self._record(con, "root_exported", "SELECT * FROM just_exported")

    @staticmethod
    def _record(con: duckdb.DuckDBPyConnection, table: str, rows_sql: str) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE recording AS {rows_sql}")
            con.execute(f"DELETE FROM {table} WHERE call_id IN (SELECT call_id FROM recording)")
            con.execute(f"INSERT INTO {table} SELECT call_id, verdict FROM recording")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


@contextlib.contextmanager
def open_timeline(settings: Settings, **options: Any) -> Iterator[Timeline]:
    """A Timeline for the settings' data dir, config and OTLP endpoints; closed on exit."""
    from pipeline.rootspan import RootSpanEmitter

    data = DataDir(settings.data_dir)
    config = options.pop("config", None) or RulesConfig.from_settings(settings)
    emitter = RootSpanEmitter(data, endpoints=settings.otlp_endpoints)
    timeline = Timeline(data, config, emitter=emitter, **options)
    try:
        yield timeline
    finally:
        timeline.close()


def build(
    settings: Settings, *, as_of_ns: int | None = None, full: bool = False, config: RulesConfig | None = None
) -> BuildSummary:
    """Build the timelines of the settings' data dir once (incrementally when possible)."""
    with open_timeline(settings, config=config) as timeline:
        return timeline.build(as_of_ns, full=full)


def remove_state(data: DataDir) -> None:
    """Forget the build state (the next build is a full one)."""
    shutil.rmtree(data.path / STATE_DIR, ignore_errors=True)
