"""End to end, over real sockets: simulator -> demo app with collectors -> ingest -> build.

Every scenario runs once, concurrently: the simulator plays MiniVoice (HTTP answer_url, `wss`
with the demo app's generated CA, webhooks), the demo app's collectors export over OTLP/HTTP to a
live callscope ingest, and the pipeline builds the calls. Each call's verdict must equal its
scenario's ground truth.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from callscope.cli import app as cli
from simulator.demo import DemoResult, run_demo
from simulator.scenarios import SCENARIOS
from tests.simulator.runs import every_scenario_once


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo(every_scenario_once(tmp_path_factory.mktemp("e2e") / "data"))


def _row(result: DemoResult, scenario: str) -> dict[str, object]:
    outcome = next(o for o in result.outcomes if o.scenario == scenario)
    return result.verdicts[outcome.call_id]


def test_every_scenario_gets_its_ground_truth_verdict(result: DemoResult) -> None:
    assert result.total == len(SCENARIOS)
    mismatches = "\n".join(
        f"{m.scenario}: expected {m.expected}, got {m.actual} ({m.reason})" for m in result.mismatches
    )
    assert not mismatches, mismatches
    assert result.correct == result.total
    for outcome in result.outcomes:
        row = result.verdicts[outcome.call_id]
        assert row["reason"] and row["next_step"], row
        assert row["is_final"] is True, (outcome.scenario, row)


def test_skewed_receiver_clock_is_reported_and_nothing_else_is(result: DemoResult) -> None:
    skews = {o.scenario: result.verdicts[o.call_id]["receiver_clock_skew_ms"] for o in result.outcomes}
    skew = skews.pop("skewed_receiver_clock")
    assert isinstance(skew, int | float) and -5000 < skew < -3000  # the receiver host is 4 s behind
    assert {s for s, value in skews.items() if value not in (None, 0)} == set()


def test_stream_facts_match_what_the_platform_saw(result: DemoResult) -> None:
    closes_early = _row(result, "receiver_closes_early")
    assert (closes_early["close_code"], closes_early["closed_by"]) == (1011, "receiver")
    dropped = _row(result, "network_drop")
    assert (dropped["close_code"], dropped["closed_by"]) == (1006, "network")
    happy_outcome = next(o for o in result.outcomes if o.scenario == "happy")
    happy = result.verdicts[happy_outcome.call_id]
    assert happy["media_frames"] == happy_outcome.media_frames_sent == 200
    assert (happy["close_code"], happy["closed_by"]) == (1000, "platform")
    assert "token=REDACTED" in str(happy["stream_url"])
    assert happy["action_valid"] is True
    duplicates = _row(result, "duplicate_webhooks")
    assert duplicates["duplicate_webhooks"] == 4  # initiated +1, answered +1, completed +2
    assert "wss" in str(_row(result, "invalid_scheme")["reason"])
    assert _row(result, "busy")["call_status"] == "busy"


def test_demo_command_scores_every_scenario(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["demo", "--calls", str(len(SCENARIOS)), "--no-dashboard", "--ingest-port", "0"]
    outcome = runner.invoke(cli, [*args, "--data", str(tmp_path / "data")])
    assert outcome.exit_code == 0, outcome.output
    assert f"verdict accuracy {len(SCENARIOS)}/{len(SCENARIOS)} against the simulator's ground truth" in (
        outcome.output
    )
    assert "receiver clock skew reported on 1 call(s)" in outcome.output
