"""Read-only SQL: one SELECT-like statement over the views, inside DuckDB's sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sql import SQLError, SQLRefused, check_read_only, format_csv, format_json, run_query
from pipeline.storage import DataDir
from pipeline.timeline import Timeline
from tests.pipeline.timeline_spans import T0, S, span_factory


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataDir]:
    directory = DataDir(tmp_path_factory.mktemp("sql") / "data", fsync=False)
    with span_factory() as spans:
        spans.ok_call("call_a")
        spans.ok_call("call_b", T0 + 60 * S)
        directory.write_segment(spans.rows())
    with Timeline(directory) as timeline:
        timeline.build(T0 + 3600 * S)
    yield directory


def test_a_select_over_the_views(data: DataDir) -> None:
    result = run_query(data, "SELECT call_id, verdict FROM calls ORDER BY call_id")
    assert result.columns == ["call_id", "verdict"]
    assert result.rows == [("call_a", "ok"), ("call_b", "ok")]


@pytest.mark.parametrize(
    "query",
    [
        "WITH v AS (SELECT verdict FROM calls) SELECT count(*) FROM v",
        "FROM call_events LIMIT 1",
        "DESCRIBE calls",
        "SHOW TABLES",
        "EXPLAIN SELECT * FROM spans",
        "SELECT count(*) FROM spans_raw",
        "VALUES (1, 'x')",
    ],
)
def test_select_like_statements_are_allowed(data: DataDir, query: str) -> None:
    assert run_query(data, query).columns


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("INSERT INTO calls VALUES (1)", "INSERT statements are not allowed"),
        ("DELETE FROM calls", "DELETE statements are not allowed"),
        ("CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
        ("DROP VIEW calls", "DROP statements are not allowed"),
        ("COPY (SELECT * FROM calls) TO '/tmp/calls.csv'", "COPY statements are not allowed"),
        ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH statements are not allowed"),
        ("INSTALL httpfs", "LOAD statements are not allowed"),
        ("LOAD httpfs", "LOAD statements are not allowed"),
        ("SET enable_external_access = true", "SET statements are not allowed"),
        ("PRAGMA database_list", "PRAGMA statements are not allowed"),
        ("SELECT 1; SELECT 2", "one statement at a time"),
        ("", "no SQL statement"),
    ],
)
def test_writes_and_escapes_are_refused_before_running(query: str, message: str) -> None:
    with pytest.raises(SQLRefused, match=message):
        check_read_only(query)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('/tmp/elsewhere/*.parquet')",
        "SELECT * FROM read_json_auto('http://169.254.169.254/latest/meta-data')",
    ],
)
def test_reading_outside_the_data_directory_is_refused(data: DataDir, query: str) -> None:
    with pytest.raises(SQLRefused, match="only the data directory's views may be read"):
        run_query(data, query)


def test_the_sandbox_cannot_be_unlocked_from_a_query(data: DataDir) -> None:
    with pytest.raises(SQLError):
        run_query(data, "SELECT set_config('enable_external_access', 'true')")
    with pytest.raises(SQLRefused):
        run_query(data, "SELECT * FROM read_csv('/etc/passwd')")


def test_files_inside_the_data_directory_may_be_read(data: DataDir) -> None:
    glob = str(Path(data.path) / "calls" / "*.parquet")
    assert run_query(data, f"SELECT count(*) FROM read_parquet('{glob}')").rows[0][0] >= 2


def test_a_bad_query_is_an_error_not_a_refusal(data: DataDir) -> None:
    with pytest.raises(SQLError, match="no_such_column"):
        run_query(data, "SELECT no_such_column FROM calls")
    with pytest.raises(SQLError, match="not valid SQL"):
        run_query(data, "SELEC 1")


def test_max_rows_truncates_and_says_so(data: DataDir) -> None:
    result = run_query(data, "SELECT * FROM call_events", max_rows=3)
    assert len(result.rows) == 3 and result.truncated


def test_csv_and_json_output(data: DataDir) -> None:
    result = run_query(data, "SELECT call_id, completed_at, action_problems FROM calls ORDER BY call_id")
    lines = format_csv(result).splitlines()
    assert lines[0] == "call_id,completed_at,action_problems"
    assert lines[1].startswith("call_a,2026-05-29T12:10:18")
    records = json.loads(format_json(result))
    assert records[0]["call_id"] == "call_a" and records[0]["action_problems"] == []
    assert records[0]["completed_at"].startswith("2026-05-29T12:10:18")
