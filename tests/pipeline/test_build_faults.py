"""`callscope build` under faults: a segment compacted away while the build reads it, an I/O error
writing the outputs, a full disk. `--follow` logs the error and tries again at the next tick; it
never dies on a transient error. A one-shot build starts over once when a segment vanishes.

The race with compaction is made deterministic, not simulated: a DataDir whose listing is followed,
before the build reads the files, by real segments arriving and the real compaction merging them.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.compaction import compact
from pipeline.storage import DataDir, Segment
from pipeline.timeline import BuildSummary, Timeline, segment_vanished
from tests.filesystem import fill, small_filesystem
from tests.pipeline.timeline_spans import T0, S, SpanFactory

LATER = T0 + 3600 * S


class CompactedWhileListed(DataDir):
    """A data directory where, `races` times, right after the build lists the segments, a new
    segment arrives and compaction merges the partition (the listed files are gone)."""

    def __init__(self, path: Path, spans: SpanFactory, races: int) -> None:
        super().__init__(path, fsync=False)
        self.spans = spans
        self.races = races
        self.raced = 0

    def segments(self, day: str | None = None) -> list[Segment]:
        listed = super().segments(day)
        if day is None and self.raced < self.races:
            self.raced += 1
            self.spans.clear()
            self.spans.ok_call(f"call_arrived_{self.raced}", T0 + self.raced * 100 * S)
            plain = DataDir(self.path, fsync=False)  # compaction lists with an ordinary DataDir
            plain.write_segment(self.spans.rows())
            assert compact(plain, small_bytes=1 << 30).partitions
        return listed


def call_ids(data: DataDir) -> set[str]:
    if not (data.path / "calls").is_dir():
        return set()
    with data.connect_readonly() as con:
        return {r[0] for r in con.execute("SELECT call_id FROM calls").fetchall()}


def _two_segments(data: DataDir, spans: SpanFactory) -> None:
    for call_id, start in (("call_a", T0), ("call_b", T0 + 50 * S)):
        spans.clear()
        spans.ok_call(call_id, start)
        DataDir(data.path, fsync=False).write_segment(spans.rows())


def test_a_one_shot_build_starts_over_once_when_compaction_removes_a_listed_segment(
    tmp_path: Path, spans: SpanFactory
) -> None:
    data = CompactedWhileListed(tmp_path / "data", spans, races=1)
    _two_segments(data, spans)
    with Timeline(data) as timeline:
        summary = timeline.build(LATER)
    assert data.raced == 1
    assert summary.mode == "full" and summary.calls_total == 3
    assert call_ids(data) == {"call_a", "call_b", "call_arrived_1"}


@contextlib.contextmanager
def following(
    timeline: Timeline, errors: list[BaseException], steps: list[BuildSummary]
) -> Iterator[Callable[[Callable[[], bool]], bool]]:
    """Run `timeline.follow` in a thread; yields `wait_for(condition)`; stops and joins it after."""
    stop = threading.Event()
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            timeline.follow(
                0.05, stop=stop, clock=lambda: LATER, on_step=steps.append, on_error=errors.append
            )
        except BaseException as exc:  # the test asserts the loop never dies
            crashed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def wait_for(condition: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not crashed:
            if condition():
                return True
            time.sleep(0.02)
        return False

    try:
        yield wait_for
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not crashed, f"follow died: {crashed!r}"


def test_follow_survives_segments_compacted_away_while_it_reads_them(
    tmp_path: Path, spans: SpanFactory
) -> None:
    # Two races in a row: the build and its one retry both fail; the next tick succeeds.
    data = CompactedWhileListed(tmp_path / "data", spans, races=2)
    _two_segments(data, spans)
    errors: list[BaseException] = []
    steps: list[BuildSummary] = []
    with Timeline(data) as timeline, following(timeline, errors, steps) as wait_for:
        assert wait_for(lambda: len(call_ids(data)) == 4)
    assert len(errors) == 1 and segment_vanished(errors[0])
    assert call_ids(data) == {"call_a", "call_b", "call_arrived_1", "call_arrived_2"}
    assert steps[0].mode == "full"


def test_follow_survives_an_io_error_writing_its_outputs(tmp_path: Path, spans: SpanFactory) -> None:
    data = DataDir(tmp_path / "data", fsync=False)
    spans.ok_call("call_a")
    data.write_segment(spans.rows())
    errors: list[BaseException] = []
    steps: list[BuildSummary] = []
    with Timeline(data) as timeline:
        timeline.build(LATER)
        spans.clear()
        spans.ok_call("call_b", T0 + 100 * S)
        data.write_segment(spans.rows())
        # The calls directory turns into a file: every write of a calls delta fails.
        calls_dir = data.path / "calls"
        shutil.move(calls_dir, tmp_path / "calls.saved")
        calls_dir.write_text("in the way")
        with following(timeline, errors, steps) as wait_for:
            assert wait_for(lambda: len(errors) >= 2)  # tried again, tick after tick
            calls_dir.unlink()
            shutil.move(tmp_path / "calls.saved", calls_dir)
            assert wait_for(lambda: call_ids(data) == {"call_a", "call_b"})
    assert all(isinstance(e, OSError) for e in errors)


def test_follow_survives_a_full_disk_and_catches_up(tmp_path: Path, spans: SpanFactory) -> None:
    with small_filesystem(tmp_path / "fs", "64m") as fs:
        data = DataDir(fs / "data", fsync=False)
        spans.ok_call("call_a")
        data.write_segment(spans.rows())
        errors: list[BaseException] = []
        steps: list[BuildSummary] = []
        with Timeline(data, memory_limit=None) as timeline:
            timeline.build(LATER)
            spans.clear()
            spans.ok_call("call_b", T0 + 100 * S)
            data.write_segment(spans.rows())
            filler = fill(fs)
            with following(timeline, errors, steps) as wait_for:
                assert wait_for(lambda: len(errors) >= 2)
                filler.unlink()
                assert wait_for(lambda: call_ids(data) == {"call_a", "call_b"})
        messages: list[Any] = [str(e) for e in errors]
        assert any("No space left on device" in m or "space" in m.lower() for m in messages), messages
