"""Span segments with the typed `minivoice` column: how they are written, merged and read.

- A segment that has the column has it filled on every row: tables without it (segments written
  before the column existed, the pipeline's root spans) are written without it, and compaction
  merges typed and untyped segments apart. Readers (the timeline) rely on this to skip the JSON.
- Old and new segments read together (union_by_name): the old rows show the column as null.
- Parquet settings of segments: dictionary only on low-cardinality columns, statistics only on the
  top-level scalars.
- The roll-up decodes a WAL file in one C walk, or record by record when a record needs the Python
  path: the segment is the same either way.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from pipeline.compaction import compact
from pipeline.otlp import decode_protobuf, fast_records_to_table, parse_protobuf, request_to_table
from pipeline.rollup import roll_wal_file
from pipeline.samples import sample_request
from pipeline.schema import MINIVOICE_COLUMN, SPAN_SCHEMA, UNTYPED_SPAN_SCHEMA
from pipeline.storage import SEGMENT_DICTIONARY_COLUMNS, SEGMENT_STATISTICS_COLUMNS, DataDir
from pipeline.wal import HEADER

START_NS = 1_714_564_800_000_000_000  # sample_request's day: 2024-05-01


def _typed(seed: int, spans: int = 10) -> pa.Table:
    return decode_protobuf(
        sample_request(spans, seed=seed, start_ns=START_NS).SerializeToString(), seed
    ).table


def _untyped(seed: int, spans: int = 10) -> pa.Table:
    """Rows as a segment written before the column existed."""
    return _typed(seed, spans).drop_columns([MINIVOICE_COLUMN])


def _partition_files(data: DataDir) -> list[Path]:
    return sorted(data.spans_dir.glob("date=*/*.parquet"))


def _assert_filled_where_present(path: Path) -> bool:
    """True if the file has the column; then no row of it is null."""
    table = pq.read_table(path)
    if MINIVOICE_COLUMN not in table.column_names:
        return False
    assert table[MINIVOICE_COLUMN].null_count == 0, path
    return True


def test_a_table_without_the_column_is_written_without_it(tmp_path: Path) -> None:
    data = DataDir(tmp_path, fsync=False)
    [old] = data.write_segment(_untyped(1), name="old.parquet")
    [new] = data.write_segment(_typed(2), name="new.parquet")
    assert pq.read_schema(old).names == UNTYPED_SPAN_SCHEMA.names
    assert pq.read_schema(new).names == SPAN_SCHEMA.names
    assert not _assert_filled_where_present(old) and _assert_filled_where_present(new)
    with data.connect_readonly() as con:
        rows = con.sql(f"select call_id, name, {MINIVOICE_COLUMN} as mv from spans").fetchall()
    assert len(rows) == 20
    old_rows = [mv for call_id, _, mv in rows if call_id.startswith("call_1_")]
    new_rows = {name: mv for call_id, name, mv in rows if call_id.startswith("call_2_")}
    assert old_rows and all(mv is None for mv in old_rows)
    assert new_rows["stream.receiver"]["close_code"] == 1000
    assert new_rows["answer_url"]["action_types"] == ["start_stream"]


def test_compaction_merges_typed_and_untyped_segments_apart(tmp_path: Path) -> None:
    data = DataDir(tmp_path, fsync=False)
    for seed in (1, 2):
        data.write_segment(_untyped(seed))
    for seed in (3, 4, 5):
        data.write_segment(_typed(seed))
    data.write_segment(_typed(3))  # a client retry: the same spans again (dedup inside the group)
    before = sorted(_partition_files(data))
    assert len(before) == 6
    result = compact(data, min_files=2)
    assert sorted(p.rows_in for p in result.partitions) == [20, 40]
    assert sorted(p.rows_out for p in result.partitions) == [20, 30]
    files = _partition_files(data)
    assert len(files) == 2
    assert sorted(_assert_filled_where_present(path) for path in files) == [False, True]
    with data.connect_readonly() as con:
        typed, untyped = con.execute(
            f"select count(*) filter ({MINIVOICE_COLUMN} is not null), "
            f"count(*) filter ({MINIVOICE_COLUMN} is null) from spans"
        ).fetchone() or (0, 0)
    assert (typed, untyped) == (30, 20)


def test_segment_parquet_settings(tmp_path: Path) -> None:
    data = DataDir(tmp_path, fsync=False)
    [path] = data.write_segment(_typed(7, spans=50))
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    columns = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}
    # every listed path exists (a typo would silently leave a column without its dictionary)
    assert set(SEGMENT_DICTIONARY_COLUMNS) <= set(columns)
    assert set(SEGMENT_STATISTICS_COLUMNS) <= set(columns)

    def dictionary(name: str) -> bool:
        return any("DICTIONARY" in encoding for encoding in columns[name].encodings)

    for name in (
        "source",
        "name",
        "resource_attributes",
        "minivoice.event",
        "minivoice.action_types.list.element",
    ):
        assert dictionary(name), name
    for name in ("span_id", "trace_id", "attributes", "start_ns", "minivoice.stream_id"):
        assert not dictionary(name), name
    for name in ("trace_id", "call_id", "start_ns", "ingested_at_ns"):
        assert columns[name].is_stats_set, name
    for name in ("attributes", "events.list.element.attributes", "minivoice.close_code"):
        assert not columns[name].is_stats_set, name


def _wal_file(data: DataDir, name: str, records: list[tuple[bytes, int]]) -> Path:
    data.wal_dir.mkdir(parents=True, exist_ok=True)
    path = data.wal_dir / name
    path.write_bytes(b"".join(HEADER.pack(len(b), zlib.crc32(b), t) + b for b, t in records))
    return path


def test_rollup_of_a_wal_file_in_one_walk_or_record_by_record(tmp_path: Path) -> None:
    data = DataDir(tmp_path, fsync=False)
    plain = [
        (sample_request(40, seed=seed, start_ns=START_NS).SerializeToString(), 1000 + seed)
        for seed in range(3)
    ]
    odd = sample_request(10, seed=9, start_ns=START_NS)
    span = odd.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="minivoice.close.code", value=AnyValue(int_value=1))  # a repeated key:
    span.attributes.add(key="minivoice.close.code", value=AnyValue(string_value="x"))  # Python decides
    mixed = [*plain[:2], (odd.SerializeToString(), 2000), plain[2]]
    assert fast_records_to_table(plain) is not None and fast_records_to_table(mixed) is None
    for name, records in (("wal-1-a.log", plain), ("wal-2-b.log", mixed)):
        result = roll_wal_file(str(data.path), str(_wal_file(data, name, records)), fsync=False)
        [segment] = result.segments
        expected = pa.concat_tables(request_to_table(parse_protobuf(b), t).table for b, t in records)
        stored = pq.read_table(segment).cast(SPAN_SCHEMA)
        assert stored.num_rows == expected.num_rows == result.spans
        assert stored.drop_columns(["minivoice"]).equals(expected.drop_columns(["minivoice"]))
        assert stored["minivoice"].to_pylist() == expected["minivoice"].to_pylist()
    assert not list(data.wal_dir.iterdir())
