"""The data directory: atomic segments in date partitions, views that work on empty and full dirs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipeline.schema import SPAN_SCHEMA
from pipeline.storage import DataDir, StorageError, partition_by_date

DAY = 86_400 * 10**9
T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


def span_rows(n: int, *, start_ns: int = T0, span_base: int = 1, ingested_at_ns: int = 1) -> pa.Table:
    """n distinct span rows of one trace, one per span id."""
    rows = [
        {
            "trace_id": "ab" * 16,
            "span_id": f"{span_base + i:016x}",
            "parent_span_id": None,
            "trace_state": None,
            "name": "stream.receiver",
            "kind": "SERVER",
            "start_ns": start_ns + i,
            "end_ns": start_ns + i + 1000,
            "status_code": "OK",
            "status_message": None,
            "service_name": "svc",
            "scope_name": None,
            "scope_version": None,
            "call_id": f"call_{i}",
            "source": "receiver",
            "attributes": '{"minivoice.media.frames":3}',
            "resource_attributes": '{"service.name":"svc"}',
            "events": [{"time_ns": start_ns, "name": "start", "attributes": "{}"}],
            "links": None,
            "ingested_at_ns": ingested_at_ns,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=SPAN_SCHEMA)


def test_empty_data_dir_has_typed_empty_views(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d").ensure()
    assert data.db_path.exists()
    with duckdb.connect(str(data.db_path), read_only=True) as con:
        assert con.execute("select count(*) from spans").fetchone() == (0,)
        columns = [row[0] for row in con.execute("describe spans_raw").fetchall()]
    assert columns == [*SPAN_SCHEMA.names, "date"]
    with data.connect_readonly() as con:
        assert con.execute("select count(*) from spans_raw").fetchone() == (0,)


def test_segments_are_partitioned_by_utc_date_of_start(tmp_path: Path) -> None:
    data = DataDir(tmp_path).ensure()
    table = pa.concat_tables([span_rows(2), span_rows(3, start_ns=T0 + DAY, span_base=100)])
    paths = data.write_segment(table)
    assert sorted(p.parent.name for p in paths) == ["date=2023-11-14", "date=2023-11-15"]
    assert {p.name for p in paths} == {paths[0].name}  # one segment name across its partitions
    assert [(s.date, s.size_bytes > 0) for s in data.segments()] == [
        ("2023-11-14", True),
        ("2023-11-15", True),
    ]
    # No temp files left behind, nothing hidden in the globbed directories.
    assert not [p for p in tmp_path.rglob(".*") if p.name not in (".lock",)]
    with duckdb.connect(str(data.db_path), read_only=True) as con:
        rows = con.execute("select date::varchar, count(*) from spans group by 1 order by 1").fetchall()
    assert rows == [("2023-11-14", 2), ("2023-11-15", 3)]


def test_partition_by_date_handles_midnight_and_garbage_times() -> None:
    midnight = (T0 // DAY + 1) * DAY
    table = pa.concat_tables(
        [span_rows(1, start_ns=midnight - 1), span_rows(1, start_ns=midnight), span_rows(1, start_ns=0)]
    )
    parts = partition_by_date(table)
    assert sorted(parts) == ["1970-01-01", "2023-11-14", "2023-11-15"]
    assert all(part.num_rows == 1 for part in parts.values())


def test_spans_view_deduplicates_retries_latest_ingested_wins(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.write_segment(span_rows(3, ingested_at_ns=10))
    retry = span_rows(3, ingested_at_ns=20).set_column(
        SPAN_SCHEMA.get_field_index("name"), "name", pa.array(["retried"] * 3)
    )
    data.write_segment(retry)
    with data.connect_readonly() as con:
        assert con.execute("select count(*) from spans_raw").fetchone() == (6,)
        assert con.execute("select count(*), min(name), min(ingested_at_ns) from spans").fetchone() == (
            3,
            "retried",
            20,
        )


def test_views_database_works_from_another_process_and_cwd(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    data.write_segment(span_rows(4))
    data.write_table_file("results", pa.table({"call_id": ["call_1"], "verdict": ["ok"]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        "print(con.execute('select count(*) from spans').fetchone()[0], "
        "con.execute('select verdict from results').fetchone()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "../data/callscope.duckdb"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.split() == ["4", "ok"]


def test_new_segments_show_up_without_rebuilding_views(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.write_segment(span_rows(1))
    with duckdb.connect(str(data.db_path), read_only=True) as reader:
        assert reader.execute("select count(*) from spans").fetchone() == (1,)
        assert data.refresh_views_if_changed() is False  # nothing new to declare
        data.write_segment(span_rows(2, span_base=50))
        assert reader.execute("select count(*) from spans").fetchone() == (3,)


def test_table_file_replacement_is_atomic_and_named(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    first = data.write_table_file("notes", pa.table({"n": [1]}), filename="base.parquet")
    second = data.write_table_file("notes", pa.table({"n": [2]}), filename="base.parquet")
    assert first == second == tmp_path / "notes" / "base.parquet"
    with data.connect_readonly() as con:
        assert con.execute("select n from notes").fetchall() == [(2,)]


@pytest.mark.parametrize("name", ["spans", "wal", "../x", "a/b", "_private"])
def test_bad_table_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StorageError, match="not a usable table name"):
        DataDir(tmp_path).write_table_file(name, pa.table({"n": [1]}))


def test_stored_json_columns_parse_in_duckdb(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.write_segment(span_rows(2))
    with data.connect_readonly() as con:
        frames = con.execute("select sum((attributes->>'$.\"minivoice.media.frames\"')::int) from spans")
        assert frames.fetchone() == (6,)
