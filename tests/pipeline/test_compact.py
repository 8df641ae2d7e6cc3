"""Compaction merges small segments per date, drops duplicate spans, and never loses a row."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from callscope.cli import app
from pipeline.compaction import CompactionBusyError, _compaction_lock, compact, exchange
from pipeline.storage import DataDir
from tests.pipeline.test_storage import DAY, T0, span_rows


def _fill(data: DataDir) -> None:
    data.write_segment(span_rows(5, ingested_at_ns=1))
    data.write_segment(span_rows(5, ingested_at_ns=2))  # a client retry: the same 5 spans again
    data.write_segment(span_rows(3, span_base=100, ingested_at_ns=3))
    data.write_segment(span_rows(2, start_ns=T0 + DAY, span_base=200))  # alone in its partition


def test_compaction_merges_and_deduplicates(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    _fill(data)
    result = compact(data)
    [partition] = result.partitions
    assert (partition.date, partition.inputs, partition.rows_in, partition.rows_out) == (
        "2023-11-14",
        3,
        13,
        8,
    )
    assert result.duplicates_dropped == 5
    assert [s.path.name for s in data.segments("2023-11-14")] == [partition.merged.name]
    assert len(data.segments("2023-11-15")) == 1  # a single segment is left alone
    with data.connect_readonly() as con:
        assert con.execute("select count(*) from spans_raw").fetchone() == (10,)
        assert con.execute("select count(*) from spans").fetchone() == (10,)
        # The latest-ingested copy is kept, as the spans view would have chosen.
        assert con.execute(
            "select min(ingested_at_ns) from spans_raw where span_id < '0000000000000010'"
        ).fetchone() == (2,)
    assert not data.staging_dir.exists()


def test_segments_arriving_during_compaction_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DataDir(tmp_path)
    _fill(data)
    from pipeline import compaction

    real_swap = compaction._swap_in

    def swap_after_a_new_segment(*args: object) -> Path:
        # A segment lands after the inputs were read and before the swap.
        data.write_segment(span_rows(4, span_base=500, ingested_at_ns=9))
        return real_swap(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(compaction, "_swap_in", swap_after_a_new_segment)
    compact(data)
    with data.connect_readonly() as con:
        assert con.execute("select count(*) from spans_raw").fetchone() == (14,)
    assert len(data.segments("2023-11-14")) == 2  # the merged file and the newcomer


def test_exchange_swaps_directories_atomically(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from_a").touch()
    (tmp_path / "b").mkdir()
    assert exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "from_a").exists()
    assert not (tmp_path / "a" / "from_a").exists()


def test_readers_never_see_a_partial_partition(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    for batch in range(12):
        data.write_segment(span_rows(10, span_base=1000 * batch))
    expected = 120
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        with duckdb.connect(str(data.db_path), read_only=True) as con:
            while not stop.is_set():
                try:
                    seen.append(con.execute("select count(*) from spans_raw").fetchone()[0])  # type: ignore[index]
                except duckdb.IOException:
                    seen.append(-1)  # a file vanished between glob and open: retryable, never wrong

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            compact(data, min_files=2)
            for batch in range(3):
                data.write_segment(span_rows(10, span_base=1000 * batch))  # duplicates, to merge again
            expected += 30
    finally:
        stop.set()
        reader.join()
    counts = [count for count in seen if count >= 0]
    assert counts, "the reader ran no query"
    # Never both the merged file and its inputs (a double count), never neither (a drop).
    assert all(120 <= count <= expected for count in counts), sorted(set(counts))


def test_second_compaction_is_refused_while_one_runs(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    _fill(data)
    with _compaction_lock(data), pytest.raises(CompactionBusyError, match="another process"):
        compact(data)


def test_compact_command(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    _fill(data)
    result = CliRunner().invoke(app, ["compact", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "5 duplicates dropped" in result.output
    missing = CliRunner().invoke(app, ["compact", "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "has no spans/ directory" in missing.output


def test_leftovers_of_a_crashed_compaction_are_cleaned(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    _fill(data)
    data.staging_dir.mkdir()
    (data.staging_dir / "cmp-half-written.parquet").write_bytes(b"PAR1 partial")
    compact(data)
    assert not data.staging_dir.exists()
    with data.connect_readonly() as con:
        assert con.execute("select count(*) from spans").fetchone() == (10,)


def test_table_rows_are_unchanged_by_compaction(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    _fill(data)
    with data.connect_readonly() as con:
        before = con.sql("select * exclude (date) from spans order by span_id").to_arrow_table()
    compact(data)
    with data.connect_readonly() as con:
        after = con.sql("select * exclude (date) from spans order by span_id").to_arrow_table()
    assert after.equals(before)
    assert isinstance(after, pa.Table)
