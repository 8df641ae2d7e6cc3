"""The demo run the end-to-end tests share."""

from __future__ import annotations

from pathlib import Path

from simulator.demo import DemoOptions
from simulator.scenarios import SCENARIOS


def every_scenario_once(data_dir: Path) -> DemoOptions:
    """Every scenario once, concurrently, into `data_dir`: 2 s of audio at 5x, a 1 s answer_url
    timeout, 1 s grace and settle periods, ingest on a free port."""
    return DemoOptions(
        data_dir=data_dir,
        ingest_port=0,
        scenarios=tuple(SCENARIOS.values()),
        media_seconds=2.0,
        speed=5.0,
        answer_url_timeout_ms=1000,
        grace_seconds=1,
        settle_seconds=1,
    )
