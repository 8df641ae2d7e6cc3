"""Read-only SQL over the views (`callscope sql`, the dashboard's SQL page).

Two locks, so that a question can never change anything or read outside the data directory:

1. The text is parsed with DuckDB's own parser (`duckdb.extract_statements`): exactly one
   statement, and only SELECT-like ones (SELECT, WITH, VALUES, FROM-first, DESCRIBE, SHOW,
   SUMMARIZE, EXPLAIN). INSERT, COPY ... TO, ATTACH, INSTALL/LOAD, SET, PRAGMA, CREATE ... are
   refused before anything runs.
2. It runs on a private in-memory connection that only defines the views, inside DuckDB's
   sandbox: `allowed_directories` is the data directory, `enable_external_access` is off (no
   other file, no network), extension autoloading and autoinstalling are off, and the
   configuration is locked, so the query cannot switch any of this back. `read_csv('/etc/passwd')`
   fails with DuckDB's permission error, which is reported as a refusal.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.storage import DataDir

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

#: Statement types a read-only question may have.
ALLOWED_TYPES = ("SELECT", "EXPLAIN")
DEFAULT_TIMEOUT_S = 120.0


class SQLRefused(ValueError):
    """The statement is not a single read-only query, or it reached outside the data directory."""


class SQLError(ValueError):
    """The query is read-only but DuckDB could not run it (unknown column, bad syntax, ...)."""


def check_read_only(sql: str) -> str:
    """The one read-only statement in `sql`, or SQLRefused saying why not. Runs nothing."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SQLError(f"not valid SQL: {exc}") from exc
    if not statements:
        raise SQLRefused("no SQL statement given")
    if len(statements) > 1:
        raise SQLRefused(f"one statement at a time, please ({len(statements)} given)")
    statement = statements[0]
    kind = statement.type.name
    if kind not in ALLOWED_TYPES:
        raise SQLRefused(
            f"{kind} statements are not allowed: callscope sql is read-only "
            "(SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
        )
    if kind == "EXPLAIN":
        # EXPLAIN ANALYZE runs the statement it explains: `EXPLAIN ANALYZE COPY ... TO` would
        # write into the data directory. The explained statement must be read-only too.
        check_read_only(_explained(str(statement.query)))
    return str(statement.query)


def _explained(sql: str) -> str:
    """The statement after `EXPLAIN [ANALYZE] [(options)]`, comments skipped."""
    import re

    import duckdb

    starts = [start for start, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment]
    index, depth = 1, 0  # token 0 is EXPLAIN
    while index < len(starts):
        word = re.match(r"\w+|\S", sql[starts[index] :])
        text = word.group(0).upper() if word else ""
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0 and text not in ("ANALYZE", "ANALYSE"):
            return sql[starts[index] :]
        index += 1
    return ""


def sandboxed_connection(data: DataDir) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the views defined, sandboxed to the data directory."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, select in data.view_definitions().items():
            con.execute(f'CREATE VIEW "{name}" AS {select}')
        root = str(data.path).replace("'", "''")
        con.execute(f"SET temp_directory = '{root}/_timeline/sql-tmp'")
        con.execute(f"SET allowed_directories = ['{root}/']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and rows (at most `max_rows`; `truncated` says whether more existed)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _map_error(exc: Exception) -> Exception:
    import duckdb

    if isinstance(exc, duckdb.PermissionException):
        return SQLRefused(f"only the data directory's views may be read: {exc}")
    if isinstance(exc, duckdb.InterruptException):
        return SQLError("the query was stopped: it ran past the time limit")
    return SQLError(str(exc))


@contextlib.contextmanager
def _read_only_query(
    data: DataDir, sql: str, timeout_s: float | None
) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """The checked query and a sandboxed connection to run it on, interrupted after `timeout_s`;
    DuckDB errors raised in the block become SQLError or SQLRefused."""
    import duckdb

    query = check_read_only(sql)
    with sandboxed_connection(data) as con:
        timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
        if timer:
            timer.start()
        try:
            yield con, query
        except duckdb.Error as exc:
            raise _map_error(exc) from exc
        finally:
            if timer:
                timer.cancel()


def run_query(
    data: DataDir, sql: str, *, max_rows: int | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> QueryResult:
    """Run one read-only query over the views. Raises SQLRefused or SQLError with a clear message."""
    with _read_only_query(data, sql, timeout_s) as (con, query):
        cursor = con.execute(query)
        columns = [d[0] for d in cursor.description or ()]
        if max_rows is None:
            rows = cursor.fetchall()
            truncated = False
        else:
            rows = cursor.fetchmany(max_rows + 1)
            truncated = len(rows) > max_rows
            rows = rows[:max_rows]
            if truncated:
                con.abort()
    return QueryResult(columns, [tuple(r) for r in rows], truncated)


def run_query_arrow(data: DataDir, sql: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> pa.Table:
    """Like `run_query`, as an Arrow table (for the dashboard)."""
    with _read_only_query(data, sql, timeout_s) as (con, query):
        return con.sql(query).to_arrow_table()


def format_csv(result: QueryResult) -> str:
    """The result as CSV text (header line first)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else _plain(v) for v in row])
    return out.getvalue()


def format_json(result: QueryResult) -> str:
    """The result as a JSON array of objects (times in ISO 8601)."""
    import json

    return json.dumps([{k: _plain(v) for k, v in r.items()} for r in result.records()], ensure_ascii=False)


def _plain(value: Any) -> Any:
    """A JSON/CSV-friendly form of a DuckDB value."""
    import datetime
    import decimal
    import uuid

    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
