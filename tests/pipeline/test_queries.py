"""Query helpers shared by the CLI and the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline import queries
from pipeline.storage import DataDir
from pipeline.timeline import Timeline
from tests.pipeline.timeline_spans import T0, S, span_factory


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("5", 300), ("1.5h", 5400)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert queries.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15x", "-1m", "0s", "m15"])
def test_parse_duration_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(queries.DurationError):
        queries.parse_duration(text)


def test_breakdown_close_matches_and_timeline(tmp_path: object) -> None:
    data = DataDir(f"{tmp_path}/data", fsync=False)
    with span_factory() as spans:
        for i in range(3):
            spans.ok_call(f"call_{i:03d}", T0 + i * 60 * S)
        spans.lifecycle("call_busy", T0, T0 + 10 * S, final_status="busy", answered=False)
        data.write_segment(spans.rows())
    with Timeline(data) as timeline:
        timeline.build(T0 + 3600 * S)
    with data.connect_readonly() as con:
        since = datetime.fromtimestamp(T0 / 1e9, UTC) - timedelta(minutes=1)
        breakdown = queries.verdict_breakdown(con, since, since + timedelta(hours=1))
        assert breakdown.by_verdict == {"ok": 3, "call_failed": 1}
        assert (breakdown.judged, breakdown.failures, breakdown.failure_rate) == (4, 1, 0.25)
        assert queries.close_matches(con, "call_01")[:1] == ["call_001"]
        assert queries.close_matches(con, "zzzzzzzz") == []
        points = queries.call_timeline(con, "call_000")
        assert [p["ts"] for p in points] == sorted(p["ts"] for p in points)
        assert points[-1]["event"] == "verdict"
        assert queries.call_row(con, "call_000")["verdict"] == "ok"  # type: ignore[index]
        assert queries.call_row(con, "nope") is None
