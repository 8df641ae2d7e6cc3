"""Soak-lite: bench/soak.py's whole set-up, small, with one kill -9 of ingest mid-run.

Thirty calls (every scenario, the rest happy) from the simulator, through the demo app with the
collectors (its own process), `callscope ingest` (a process, killed with SIGKILL while spans are
flowing and restarted on the same port) and `callscope build --follow` (a process); then a clean
ingest stop, `callscope compact` and a last build. The ledger of the demo app's exporter says which
spans ingest acknowledged: each must be in `spans_raw` exactly once, and every call whose spans
were all stored must get its ground-truth verdict.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("callscope_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_thirty_calls_with_a_kill_9_store_every_acknowledged_span_once(tmp_path: Path) -> None:
    soak = _soak_module()
    options = soak.SoakOptions(
        work_dir=tmp_path,
        calls=30,
        concurrency=30,
        media_seconds=2.0,
        speed=4.0,
        faults=frozenset({"ingest_kill", "webhooks"}),
        schedule=(("ingest_kill", 0.6),),
        ingest_down_s=0.5,
        fault_settle_s=2.0,
        grace_s=2,
        bsp_delay_ms=100,
        follow_interval_s=0.5,
        compact_interval_s=0,
        sample_every_s=1.0,
    )
    report = soak.run_soak(options, log=lambda _message: None)
    detail = "\n".join(report.lines())

    assert report.calls == 30
    spans = report.spans
    assert spans["ended"] > 100, detail
    assert spans["acked"] + spans["export_failed"] + spans["never_exported"] == spans["ended"]
    # The target: nothing acknowledged is lost, nothing is stored twice once compacted.
    assert spans["acked_not_stored"] == 0, detail
    assert spans["stored_more_than_once"] == 0, detail
    assert spans["stored_rows"] == spans["stored_distinct"] == spans["spans_view_rows"]
    (kill,) = report.faults
    assert kill["name"] == "ingest_kill"
    assert kill["details"]["wal_files_left_by_the_kill"] >= 1, "the kill should leave a log to replay"
    assert kill["details"].get("children_alive_after_kill", []) == []
    verdicts = report.verdicts
    assert verdicts["complete"] >= 1
    assert verdicts["correct_complete"] == verdicts["complete"], detail
    assert report.collectors["internal_errors"] == 0
    assert report.processes["ingest exit code at SIGTERM"] == 0
    assert report.processes["build --follow restarts after dying"] == []
    assert report.privacy["findings"] == {}  # no phone number, payload or token in any log
    assert report.problems == []
