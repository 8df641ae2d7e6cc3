"""The dashboard's fixture dataset, made by the real product end to end (never a hand-made table).

One call of every simulator scenario goes through the demo: the simulated MiniVoice platform calls
the demo customer app (with the real collectors installed), the collectors export OTLP to a real
`callscope ingest` on loopback, and `pipeline.timeline` builds `calls` and `call_events`. Phone
numbers are hashed with PII_KEY. Built once per test session (about 5 s) and shared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.messages import CallInfo
from simulator.scenarios import SCENARIOS

PII_KEY = "dashboard-test-pii-key"
"""CALLSCOPE_PII_KEY the collectors hashed the fixture's phone numbers with."""
FROM_NUMBER = CallInfo("x").from_number
"""The caller number of every simulated call."""

_BUILT: dict[str, DemoData] = {}


@dataclass(frozen=True, slots=True)
class DemoData:
    """A data directory filled by the demo, and what we know about each call."""

    data_dir: Path
    call_ids: dict[str, str]
    """scenario name -> call id"""
    rows: dict[str, dict[str, Any]]
    """call id -> its `calls` row, as the build wrote it"""

    def call(self, scenario: str) -> str:
        """The call id of a scenario's call."""
        return self.call_ids[scenario]

    def row(self, scenario: str) -> dict[str, Any]:
        """The `calls` row of a scenario's call."""
        return self.rows[self.call_ids[scenario]]


def demo_data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    """The session's fixture dataset (built on first use)."""
    if "demo" not in _BUILT:
        _BUILT["demo"] = _build(tmp_path_factory.mktemp("dashboard-demo") / "data")
    return _BUILT["demo"]


def _build(data_dir: Path) -> DemoData:
    from simulator.demo import DemoOptions, run_demo

    options = DemoOptions(
        data_dir=data_dir,
        ingest_port=0,
        scenarios=tuple(SCENARIOS.values()),
        media_seconds=1.0,
        speed=20.0,
        grace_seconds=1,
        ingest_fsync=False,
        concurrency=len(SCENARIOS),
    )
    previous = os.environ.get("CALLSCOPE_PII_KEY")
    os.environ["CALLSCOPE_PII_KEY"] = PII_KEY  # the collectors read it when the demo app starts
    try:
        result = run_demo(options)
    finally:
        if previous is None:
            os.environ.pop("CALLSCOPE_PII_KEY", None)
        else:
            os.environ["CALLSCOPE_PII_KEY"] = previous
    call_ids = {outcome.scenario: outcome.call_id for outcome in result.outcomes}
    assert len(call_ids) == len(SCENARIOS), "the demo must place one call per scenario"
    assert set(result.verdicts) == set(call_ids.values()), "every call must have a calls row"
    return DemoData(data_dir, call_ids, result.verdicts)
