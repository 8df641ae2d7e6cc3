"""The data directory: immutable Parquet files, and a DuckDB file that holds views only.

Layout (everything under one directory, `DIR`)::

    DIR/spans/date=YYYY-MM-DD/<segment>.parquet   span rows (SPAN_SCHEMA); date = UTC date of start_ns
    DIR/<table>/**/*.parquet                       other tables the pipeline writes (calls, call_events, ...)
    DIR/callscope.duckdb                           views over the files above, with absolute paths
    DIR/wal/                                       ingest's write-ahead log (pipeline.wal); not a table
    DIR/.staging/                                  compaction work space; never read by the views
    DIR/.lock                                      flock that orders segment renames against compaction

Writers never modify a visible file. Each file is written under a hidden temporary name in its
final directory (`.<name>.tmp`, which the `*.parquet` globs do not match), fsync'd, renamed into
place and the directory fsync'd, so a reader sees either nothing or the whole file, even after a
crash.

`callscope.duckdb` is never held open by a writer: DuckDB lets a read-write opener lock everyone
else out. It is rebuilt as a temporary file and renamed over the old one (`refresh_views`);
readers that still have the old file open keep its inode. Its views glob the directories at query
time, so new segments show up without a rebuild; a rebuild is needed only when a table appears.

Views:

- `spans_raw`: every stored span row, plus the hive `date` column. OTLP clients retry, so it may hold
  the same (trace_id, span_id) more than once.
- `spans`: one row per (trace_id, span_id): the copy ingested last wins (ties broken by content):
  retries are identical, and a span re-emitted with the same ids shows its latest content.
- one view per other table directory (`calls`, ...), over all its Parquet files.
- views over other views, registered by `pipeline.tables.derived_views` (`call_events`, derived
  from `spans_raw` and `calls`).

A table with no files yet: `spans_raw`/`spans` become typed empty views (SPAN_SCHEMA's columns),
so queries work on an empty data dir. Other tables get a view only once a file exists, unless their
empty schema is registered in `EMPTY_TABLE_SCHEMAS`; a query on a table that does not exist yet then
fails with DuckDB's "Table ... does not exist". Tables whose view is not a plain scan (e.g. "latest
row per call_id") register their SQL in `TABLE_VIEWS`.

Public API: `DataDir(path)` with `.spans_dir`, `.db_path`, `.wal_dir`, `write_segment(table)`,
`table_dir(name)`, `write_table_file(name, table)`, `segments()`, `tables()`,
`view_definitions()`, `refresh_views()`, `connect_readonly()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import MINIVOICE_COLUMN, MINIVOICE_FIELDS, SPAN_SCHEMA, UNTYPED_SPAN_SCHEMA
from pipeline.tables import SPAN_COPY_ORDER, TIMELINE_EMPTY_SCHEMAS, TIMELINE_VIEWS, derived_views

if TYPE_CHECKING:
    import duckdb

SPANS = "spans"
"""Directory (and table) name of the span segments."""
DB_NAME = "callscope.duckdb"
"""The views database, relative to the data directory."""
VIEWS_STORAGE_VERSION = "v1.0.0"
"""Its storage format: the oldest DuckDB writes, so that `duckdb` shells from 1.0 on open it."""
WAL_DIR = "wal"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
#: Directory names under DIR that are never tables.
RESERVED = frozenset({SPANS, WAL_DIR})

NS_PER_DAY = 86_400 * 1_000_000_000
#: Parquet compression for every file we write: zstd level 1 is nearly as fast as snappy and
#: about 30% smaller on span rows (JSON attribute text compresses well).
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1


def _leaf(column: str, arrow_type: pa.DataType) -> str:
    """The Parquet column path of a field (lists as pyarrow writes them: `x.list.element`)."""
    return f"{column}.list.element" if pa.types.is_list(arrow_type) else column


#: `minivoice` fields with many distinct values per segment (per call or per span).
_HIGH_CARDINALITY_MINIVOICE = frozenset(
    {
        "from_masked", "to_masked", "from_hash", "to_hash", "latency_ms", "response_body", "stream_url",
        "stream_id", "media_frames", "media_inbound_frames", "media_outbound_frames", "media_first_at_ns",
        "media_last_at_ns", "created_at_ns",
    }
)  # fmt: skip
#: Segment columns (Parquet paths) that get a dictionary: those with few distinct values per file.
#: The others (ids, times, JSON text) fill the dictionary page, then fall back to plain encoding,
#: so trying costs CPU for nothing. Measured on realistic roll-up segments (bench/ingest.py,
#: docs/benchmarks.md "Ingest"): with the statistics below, ~10% less Parquet CPU and ~17% smaller
#: files than pyarrow's defaults (dictionary and statistics on every column).
SEGMENT_DICTIONARY_COLUMNS: tuple[str, ...] = (
    "trace_state", "name", "kind", "status_code", "status_message", "service_name", "scope_name",
    "scope_version", "source", "resource_attributes", "links", "ingested_at_ns", "events.list.element.name",
    *(
        _leaf(f"{MINIVOICE_COLUMN}.{name}", arrow_type)
        for name, _, arrow_type in MINIVOICE_FIELDS
        if name not in _HIGH_CARDINALITY_MINIVOICE
    ),
)  # fmt: skip
#: Segment columns with Parquet min/max statistics: the top-level scalars, which queries filter on
#: (ids, times, names) and segments are clustered by (arrival time; trace id after compaction). The
#: JSON text, the events and the `minivoice` fields are never clustered: their statistics could not
#: prune a row group, and computing them costs ~5% of the Parquet CPU.
SEGMENT_STATISTICS_COLUMNS: tuple[str, ...] = tuple(
    f.name
    for f in UNTYPED_SPAN_SCHEMA
    if f.name not in {"attributes", "resource_attributes", "events", "links"}
)

#: SQL (a SELECT over `{glob}`, the absolute glob of the table's Parquet files) for tables whose
#: view is more than a plain scan. The timeline owns the `calls`/`call_events` entries.
TABLE_VIEWS: dict[str, str] = {**TIMELINE_VIEWS}
#: Arrow schemas of tables that should have a typed, empty view before their first file exists.
EMPTY_TABLE_SCHEMAS: dict[str, pa.Schema] = {**TIMELINE_EMPTY_SCHEMAS}


class StorageError(RuntimeError):
    """The data directory cannot be used as asked (bad table name, unwritable directory, ...)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One span segment file: its path, UTC date partition and size on disk."""

    path: Path
    date: str
    size_bytes: int


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename or create inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_file_name(prefix: str = "seg") -> str:
    """A unique, roughly time-ordered Parquet file name."""
    return f"{prefix}-{time.time_ns():020d}-{secrets.token_hex(4)}.parquet"


def _all_or_columns(option: bool | Sequence[str]) -> bool | list[str]:
    return option if isinstance(option, bool) else list(option)


def write_parquet_atomic(
    table: pa.Table,
    path: Path,
    *,
    fsync: bool = True,
    use_dictionary: bool | Sequence[str] = True,
    write_statistics: bool | Sequence[str] = True,
    row_group_size: int = 128 * 1024,
) -> Path:
    """Write `table` to `path` via a hidden temp file, fsync and rename. Returns `path`.

    `use_dictionary`, `write_statistics`: as in `pyarrow.parquet.write_table` (all, none, or these
    column paths).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as sink:
            pq.write_table(
                table,
                sink,
                compression=COMPRESSION,
                compression_level=COMPRESSION_LEVEL,
                row_group_size=row_group_size,
                use_dictionary=_all_or_columns(use_dictionary),
                write_statistics=_all_or_columns(write_statistics),
            )
            sink.flush()
            if fsync:
                os.fsync(sink.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def partition_by_date(table: pa.Table) -> dict[str, pa.Table]:
    """Split span rows by the UTC date of `start_ns` (`YYYY-MM-DD`)."""
    if table.num_rows == 0:
        return {}
    # Integer division truncates toward zero; negative start times (garbage) land on 1970-01-01.
    days = pc.divide(pc.max_element_wise(table.column("start_ns"), 0), NS_PER_DAY)
    unique = pc.unique(days).to_pylist()
    if len(unique) == 1:
        return {_day_name(unique[0]): table}
    return {_day_name(day): table.filter(pc.equal(days, day)) for day in unique}


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _day_name(day: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB SQL type for an Arrow type (the ones our schemas use)."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "VARCHAR"
    simple: list[tuple[Callable[[pa.DataType], bool], str]] = [
        (pa.types.is_int64, "BIGINT"),
        (pa.types.is_int32, "INTEGER"),
        (pa.types.is_int16, "SMALLINT"),
        (pa.types.is_int8, "TINYINT"),
        (pa.types.is_uint64, "UBIGINT"),
        (pa.types.is_uint32, "UINTEGER"),
        (pa.types.is_float64, "DOUBLE"),
        (pa.types.is_float32, "FLOAT"),
        (pa.types.is_boolean, "BOOLEAN"),
        (pa.types.is_date32, "DATE"),
        (pa.types.is_binary, "BLOB"),
    ]
    for check, name in simple:
        if check(arrow_type):
            return name
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return duckdb_type(arrow_type.value_type) + "[]"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(
            f'"{arrow_type.field(i).name}" {duckdb_type(arrow_type.field(i).type)}'
            for i in range(arrow_type.num_fields)
        )
        return f"STRUCT({fields})"
    raise StorageError(f"no DuckDB type for Arrow type {arrow_type}")


def empty_select(schema: pa.Schema, extra: dict[str, str] | None = None) -> str:
    """A SELECT with the schema's columns, typed, and no rows."""
    columns = [f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in schema]
    columns += [f'CAST(NULL AS {sql_type}) AS "{name}"' for name, sql_type in (extra or {}).items()]
    return "SELECT " + ", ".join(columns) + " WHERE false"


def spans_dedup_sql(source: str) -> str:
    """SQL keeping one row per (trace_id, span_id) of `source`: the latest ingested copy wins
    (`SPAN_COPY_ORDER`; the `spans` view and compaction both use it, so they always agree)."""
    return (
        f"SELECT * FROM {source} QUALIFY row_number() OVER ("
        f"PARTITION BY trace_id, span_id ORDER BY {SPAN_COPY_ORDER}) = 1"
    )


class DataDir:
    """A callscope data directory. Cheap to construct; creates nothing until written to."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path).expanduser().resolve()
        self.fsync = fsync
        self._written_views: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"DataDir({str(self.path)!r})"

    @property
    def spans_dir(self) -> Path:
        """`DIR/spans`, the root of the date partitions."""
        return self.path / SPANS

    @property
    def db_path(self) -> Path:
        """`DIR/callscope.duckdb`, the views database."""
        return self.path / DB_NAME

    @property
    def wal_dir(self) -> Path:
        """`DIR/wal`, ingest's write-ahead log."""
        return self.path / WAL_DIR

    @property
    def staging_dir(self) -> Path:
        """`DIR/.staging`, compaction's work space (outside every view's glob)."""
        return self.path / STAGING_DIR

    def ensure(self) -> DataDir:
        """Create the directory, `spans/` and the views database if missing. Returns self."""
        try:
            self.spans_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data directory {self.path}: {exc}") from exc
        if not self.db_path.exists():
            self.refresh_views()
        return self

    # ---- writing -------------------------------------------------------------------------

    def partition_dir(self, day: str) -> Path:
        """`DIR/spans/date=YYYY-MM-DD`."""
        return self.spans_dir / f"date={day}"

    def write_segment(
        self, table: pa.Table, *, prefix: str = "seg", name: str | None = None, refresh: bool = True
    ) -> list[Path]:
        """Write span rows as one new segment per UTC date. Atomic per file; returns the paths.

        The table must have SPAN_SCHEMA's columns (extra columns are dropped, order is fixed),
        or UNTYPED_SPAN_SCHEMA's: a table without the `minivoice` column is written without it,
        so a segment that has the column has it filled (readers rely on that to skip the JSON).
        `name` (default: unique, from `prefix`) is the file name in every partition; an existing
        file of that name is replaced atomically. `refresh=False` leaves the views database alone
        (the caller refreshes it).
        """
        schema = SPAN_SCHEMA if MINIVOICE_COLUMN in table.schema.names else UNTYPED_SPAN_SCHEMA
        if table.schema != schema:
            table = table.select(schema.names).cast(schema)
        paths: list[Path] = []
        name = name or new_file_name(prefix)
        if not name.endswith(".parquet") or "/" in name:
            raise StorageError(f"segment name {name!r} must be a plain name ending in .parquet")
        for day, rows in sorted(partition_by_date(table).items()):
            directory = self.partition_dir(day)
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                if self.fsync:
                    fsync_dir(self.spans_dir)
            with self.partition_lock(exclusive=False):
                paths.append(
                    write_parquet_atomic(
                        rows,
                        directory / name,
                        fsync=self.fsync,
                        use_dictionary=SEGMENT_DICTIONARY_COLUMNS,
                        write_statistics=SEGMENT_STATISTICS_COLUMNS,
                    )
                )
        if paths and refresh:
            self.refresh_views_if_changed()
        return paths

    def table_dir(self, name: str) -> Path:
        """`DIR/<name>`, the directory of a table other than spans (created if missing)."""
        if not name.isidentifier() or name in RESERVED or name.startswith("_"):
            raise StorageError(f"{name!r} is not a usable table name (a lowercase identifier, not spans/wal)")
        directory = self.path / name
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                fsync_dir(self.path)
        return directory

    def write_table_file(
        self,
        name: str,
        table: pa.Table,
        *,
        filename: str | None = None,
        subdir: str | None = None,
        refresh: bool = True,
        row_group_size: int = 128 * 1024,
    ) -> Path:
        """Atomically write `table` as a Parquet file of table `name`; returns its path.

        `filename` (default: a unique time-ordered name) may replace an existing file atomically.
        `subdir` (e.g. `part=base`) nests it; the table's view reads `DIR/<name>/**/*.parquet`.
        The views database is refreshed if this is the table's first file.
        """
        directory = self.table_dir(name)
        if subdir:
            directory = directory / subdir
            directory.mkdir(parents=True, exist_ok=True)
        filename = filename or new_file_name(name)
        if not filename.endswith(".parquet") or "/" in filename:
            raise StorageError(f"table file name {filename!r} must be a plain name ending in .parquet")
        path = write_parquet_atomic(
            table, directory / filename, fsync=self.fsync, row_group_size=row_group_size
        )
        if refresh:
            self.refresh_views_if_changed()
        return path

    @contextlib.contextmanager
    def partition_lock(self, *, exclusive: bool) -> Iterator[None]:
        """Writers rename segments under a shared lock; compaction swaps partitions under an exclusive one."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # ---- reading -------------------------------------------------------------------------

    def segments(self, day: str | None = None) -> list[Segment]:
        """Visible span segments, oldest name first (optionally of one date partition)."""
        if not self.spans_dir.is_dir():
            return []
        pattern = f"date={day}/*.parquet" if day else "date=*/*.parquet"
        found = []
        for path in self.spans_dir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):  # compacted away meanwhile
                found.append(Segment(path, path.parent.name.removeprefix("date="), path.stat().st_size))
        return sorted(found, key=lambda s: (s.date, s.path.name))

    def has_segments(self) -> bool:
        """Whether at least one span segment is visible."""
        return self.spans_dir.is_dir() and next(self.spans_dir.glob("date=*/*.parquet"), None) is not None

    def tables(self) -> list[str]:
        """Tables other than spans that have at least one Parquet file."""
        if not self.path.is_dir():
            return []
        names = []
        for child in sorted(self.path.iterdir()):
            name = child.name
            if name in RESERVED or name.startswith((".", "_")) or not child.is_dir():
                continue
            if any(p.name[0] != "." for p in child.rglob("*.parquet")):
                names.append(name)
        return names

    def table_glob(self, name: str) -> str:
        """The absolute glob of a table's Parquet files."""
        if name == SPANS:
            return str(self.spans_dir / "*" / "*.parquet")
        return str(self.path / name / "**" / "*.parquet")

    def view_definitions(self) -> dict[str, str]:
        """Every view's SELECT, by view name, with absolute paths (same text for every process)."""
        views: dict[str, str] = {}
        if self.has_segments():
            views["spans_raw"] = (
                f"SELECT * FROM read_parquet({_sql_string(self.table_glob(SPANS))}, "
                "hive_partitioning=true, union_by_name=true, hive_types={'date': DATE})"
            )
        else:
            views["spans_raw"] = empty_select(SPAN_SCHEMA, {"date": "DATE"})
        views["spans"] = spans_dedup_sql("spans_raw")
        present = set(self.tables())
        for name in sorted(present | set(EMPTY_TABLE_SCHEMAS)):
            if name in RESERVED or name in views:
                continue
            if name in present:
                glob = _sql_string(self.table_glob(name))
                template = TABLE_VIEWS.get(name)
                views[name] = (
                    template.format(glob=glob)
                    if template
                    else f"SELECT * FROM read_parquet({glob}, union_by_name=true)"
                )
            else:
                views[name] = empty_select(EMPTY_TABLE_SCHEMAS[name])
        # Views over the views above (the timeline's `call_events`), created after them.
        for name, select in derived_views().items():
            views.pop(name, None)
            views[name] = select
        return views

    def refresh_views(self) -> Path:
        """Rebuild `callscope.duckdb` (temp file + atomic rename); returns its path."""
        import duckdb

        self.path.mkdir(parents=True, exist_ok=True)
        views = self.view_definitions()
        tmp = self.path / f".{DB_NAME}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            with duckdb.connect() as con:
                # The oldest storage format we can write, so that any `duckdb` shell a user has
                # (1.0 or newer) opens the file: it holds only views, which need nothing newer.
                storage = f"STORAGE_VERSION '{VIEWS_STORAGE_VERSION}'"
                con.execute(f"ATTACH {_sql_string(str(tmp))} AS views_db ({storage})")
                con.execute("USE views_db")
                for name, select in views.items():
                    con.execute(f'CREATE VIEW "{name}" AS {select}')
                con.execute("CHECKPOINT views_db")
                con.execute("USE memory")
                con.execute("DETACH views_db")
            if self.fsync:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            os.rename(tmp, self.db_path)
        finally:
            for leftover in (tmp, Path(f"{tmp}.wal")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        if self.fsync:
            fsync_dir(self.path)
        self._written_views = views
        return self.db_path

    def refresh_views_if_changed(self) -> bool:
        """Rebuild the views database only if a view's SQL changed (e.g. a first file appeared)."""
        if self.view_definitions() == self._written_views and self.db_path.exists():
            return False
        self.refresh_views()
        return True

    def connect_readonly(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with every view defined: no file lock on anything."""
        import duckdb

        con = duckdb.connect()
        for name, select in self.view_definitions().items():
            con.execute(f'CREATE VIEW "{name}" AS {select}')
        return con


def utc_day(ns: int) -> str:
    """`YYYY-MM-DD` of a unix-epoch nanosecond time, in UTC."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).date().isoformat()
