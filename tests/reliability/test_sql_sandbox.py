"""Security review of the read-only SQL (dashboard SQL page, `callscope sql`): the escapes
tests/pipeline/test_sql.py does not try.

- `EXPLAIN ANALYZE` runs the statement it explains: `EXPLAIN ANALYZE COPY ... TO '<data dir>/...'`
  wrote a file inside the data directory (the sandbox allows the data directory, for reading the
  views). It could overwrite segments or plant rows in `calls`. Now refused before anything runs.
- A symlink inside the data directory that points outside, and `..` in a path, do not get out.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from callscope.cli import app as cli
from pipeline.sql import SQLRefused, check_read_only, run_query, run_query_arrow
from pipeline.storage import DataDir
from pipeline.timeline import Timeline
from tests.pipeline.timeline_spans import T0, S, span_factory


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataDir]:
    root = tmp_path_factory.mktemp("sandbox")
    directory = DataDir(root / "data", fsync=False)
    with span_factory() as spans:
        spans.ok_call("call_a")
        directory.write_segment(spans.rows())
    with Timeline(directory) as timeline:
        timeline.build(T0 + 3600 * S)
    (root / "secret.txt").write_text("outside-secret\n")
    (directory.path / "calls" / "link.txt").symlink_to(root / "secret.txt")
    yield directory


def _writes(data: DataDir) -> list[str]:
    target = data.path / "calls" / "planted.parquet"
    return [
        f"EXPLAIN ANALYZE COPY (SELECT * FROM calls) TO '{target}' (FORMAT parquet)",
        f"EXPLAIN (ANALYZE) COPY (SELECT 1 AS x) TO '{target}'",
        f"explain /* comment */ analyse COPY (SELECT 1 AS x) TO '{target}'",
        "EXPLAIN ANALYZE INSERT INTO calls VALUES (1)",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    ]


def test_explain_analyze_of_a_write_is_refused_and_writes_nothing(data: DataDir) -> None:
    for query in _writes(data):
        with pytest.raises(SQLRefused, match="statements are not allowed"):
            run_query(data, query)
        with pytest.raises(SQLRefused):
            run_query_arrow(data, query)
    assert not (data.path / "calls" / "planted.parquet").exists()
    assert run_query(data, "SELECT count(*) FROM calls").rows == [(1,)]


def test_explain_of_a_read_is_still_allowed(data: DataDir) -> None:
    for query in (
        "EXPLAIN SELECT * FROM calls",
        "EXPLAIN ANALYZE SELECT verdict FROM calls",
        "EXPLAIN (FORMAT json) SELECT 1",
        "EXPLAIN ANALYZE WITH v AS (SELECT * FROM calls) SELECT count(*) FROM v",
    ):
        assert check_read_only(query) == query
        assert run_query(data, query).columns


def test_the_cli_refuses_explain_analyze_copy(data: DataDir) -> None:
    target = data.path / "calls" / "planted.csv"
    query = f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'"
    outcome = CliRunner().invoke(cli, ["sql", query, "--data", str(data.path)])
    assert outcome.exit_code == 2, outcome.output
    assert "COPY statements are not allowed" in outcome.output
    assert not target.exists()


@pytest.mark.parametrize(
    "path",
    ["calls/link.txt", "../secret.txt", "calls/../../secret.txt", "./../secret.txt"],
)
def test_paths_that_lead_outside_the_data_directory_are_refused(data: DataDir, path: str) -> None:
    with pytest.raises(SQLRefused, match="only the data directory's views may be read"):
        run_query(data, f"SELECT * FROM read_text('{data.path}/{path}')")
