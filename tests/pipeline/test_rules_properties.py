"""Property: verdicts do not depend on the order spans arrive in, nor on how they are batched.

A pool of real spans (SDK-made, through ingest's decoder) covering every verdict is shuffled and
cut into batches by hypothesis. The pure core must give the same calls for any order; merging the
facts of the batches must give the facts of the whole; and the file-based incremental build,
applying the batches one segment at a time (with OTLP-retry duplicates thrown in), must end with
the same calls table as a single evaluation.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import facts as facts_mod
from pipeline.rules import RulesConfig
from pipeline.storage import DataDir
from pipeline.timeline import Timeline
from pipeline.verdicts import INTERNAL_COLUMNS, calls_sql, evaluate
from tests.pipeline.timeline_spans import BAD_ACTIONS, MS, T0, S, span_factory

AS_OF = T0 + 3600 * S
CONFIG = RulesConfig()


def _pool() -> pa.Table:
    with span_factory() as spans:
        spans.ok_call("call_ok")
        spans.ok_call("call_skewed", T0 + 5 * S, skew_ns=7 * S)
        t = T0 + 40 * S
        spans.lifecycle("call_dropped", t, t + 30 * S)
        spans.answer_url("call_dropped", t + 2 * S)
        spans.receiver(
            "call_dropped", t + 3 * S, t + 9 * S, stop_reason=None, close_code=1011, closed_by="receiver"
        )
        spans.webhook("call_dropped", "call.completed", t + 30 * S, delay_ms=700)  # a duplicate delivery
        spans.lifecycle("call_invalid", t, t + 9 * S)
        spans.answer_url("call_invalid", t + 2 * S, body=BAD_ACTIONS)
        spans.lifecycle("call_500", t, t + 9 * S, final_status="failed")
        spans.answer_url("call_500", t + 2 * S, body="boom", status=500)
        spans.lifecycle("call_silent", t, t + 9 * S)
        spans.answer_url("call_silent", t + 2 * S)
        spans.lifecycle("call_nomedia", t, t + 9 * S)
        spans.answer_url("call_nomedia", t + 2 * S)
        spans.receiver("call_nomedia", t + 3 * S, t + 9 * S, frames=0)
        spans.lifecycle("call_errors", t, t + 9 * S)
        spans.answer_url("call_errors", t + 2 * S)
        spans.receiver(
            "call_errors", t + 3 * S, t + 9 * S, errors=[("binary_frame", "unexpected binary frame")]
        )
        spans.lifecycle("call_busy", t, t + 9 * S, final_status="busy", answered=False)
        spans.webhook("call_lost", "call.initiated", t)
        spans.answer_url("call_lost", t + 2 * S)
        spans.receiver("call_lost", t + 3 * S, t + 60 * S)
        spans.lifecycle("call_nostream", t, t + 9 * S)
        spans.answer_url("call_nostream", t + 2 * S, body={"actions": []})
        spans.answer_url("call_retried", t + 1 * S, body="busy", status=503, latency_ms=3)
        spans.ok_call("call_retried", t)
        spans.receiver(None, t + 100 * MS, t + 200 * MS, frames=0, stop_reason=None, close_code=1002)
        # Ingest times spread over the pool, so batches see different "last ingested" times.
        rows = spans.rows()
    ingested = [T0 + 120 * S + i * 10 * MS for i in range(rows.num_rows)]
    return rows.set_column(
        rows.schema.get_field_index("ingested_at_ns"), "ingested_at_ns", pa.array(ingested, pa.int64())
    )


POOL = _pool()


def _calls(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r["call_id"])


EXPECTED = _calls(evaluate(POOL, AS_OF, CONFIG).calls)


def test_the_pool_covers_every_verdict() -> None:
    verdicts = {row["verdict"] for row in EXPECTED}
    assert verdicts >= {
        "ok",
        "stream_dropped",
        "invalid_action",
        "answer_url_failed",
        "stream_not_connected",
        "no_media",
        "receiver_error",
        "call_failed",
        "webhook_missing",
        "no_stream",
    }


orders = st.permutations(range(POOL.num_rows))


@settings(max_examples=15, deadline=None)
@given(order=orders)
def test_any_arrival_order_gives_the_same_calls(order: list[int]) -> None:
    shuffled = POOL.take(pa.array(order))
    assert _calls(evaluate(shuffled, AS_OF, CONFIG).calls) == EXPECTED


def _batches(order: list[int], cuts: list[int]) -> list[pa.Table]:
    points = sorted({c % (len(order) + 1) for c in cuts} | {0, len(order)})
    return [POOL.take(pa.array(order[a:b])) for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=15, deadline=None)
@given(order=orders, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6))
def test_facts_of_batches_merge_into_the_facts_of_the_whole(order: list[int], cuts: list[int]) -> None:
    facts_config = facts_mod.FactsConfig()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        parts = []
        for i, batch in enumerate(_batches(order, cuts)):
            con.register(f"batch{i}", batch)
            rows = f"({facts_mod.span_rows_sql(f'batch{i}')})"
            parts.append(f"SELECT * FROM ({facts_mod.call_facts_sql(rows, facts_config)})")
        con.execute(f"CREATE TABLE batch_facts AS {' UNION ALL BY NAME '.join(parts)}")
        merged = f"({facts_mod.merge_facts_sql('batch_facts', facts_config)})"
        internal = ", ".join(INTERNAL_COLUMNS)
        calls = con.sql(
            f"SELECT * EXCLUDE ({internal}) FROM ({calls_sql(merged, AS_OF, CONFIG)})"
        ).to_arrow_table()
    assert _calls(calls) == EXPECTED


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="callscope-prop-") as name:
        yield Path(name)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=orders,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=4),
    retried=st.lists(st.integers(min_value=0, max_value=10_000), max_size=3),
)
def test_incremental_build_over_any_batching_matches_one_evaluation(
    scratch: Path, order: list[int], cuts: list[int], retried: list[int]
) -> None:
    with tempfile.TemporaryDirectory(dir=scratch) as name:
        data = DataDir(Path(name), fsync=False)
        with Timeline(data, CONFIG) as timeline:
            for batch in _batches(order, cuts):
                data.write_segment(batch)
                # An OTLP retry: some spans stored again in a later segment.
                again = [i % batch.num_rows for i in retried]
                if again:
                    data.write_segment(batch.take(pa.array(again)))
                timeline.build(AS_OF)
        with data.connect_readonly() as con:
            con.execute("SET TimeZone = 'UTC'")
            built = con.sql("SELECT * FROM calls").to_arrow_table()
            unattributed = con.sql("SELECT count(*) FROM unattributed_spans").fetchall()[0][0]
    assert _calls(built) == EXPECTED
    assert unattributed == 1
