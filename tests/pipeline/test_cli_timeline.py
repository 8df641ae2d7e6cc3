"""The on-call commands through the CLI runner: build, triage, sql, check."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callscope.cli import app
from pipeline.storage import DataDir
from tests.pipeline.duckdb_shell import shell_query
from tests.pipeline.timeline_spans import BAD_ACTIONS, S, span_factory

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three calls that ended a few minutes ago, stored but not built yet."""
    path = tmp_path_factory.mktemp("cli") / "data"
    data = DataDir(path, fsync=False)
    start = (time.time_ns() - 300 * S) // S * S
    with span_factory() as spans:
        spans.ok_call("call_ok", start)
        spans.lifecycle("call_dropped", start, start + 30 * S)
        spans.answer_url("call_dropped", start + 2 * S)
        spans.receiver(
            "call_dropped",
            start + 3 * S,
            start + 12 * S,
            stop_reason=None,
            close_code=1011,
            closed_by="receiver",
        )
        spans.lifecycle("call_invalid", start, start + 9 * S)
        spans.answer_url("call_invalid", start + 2 * S, body=BAD_ACTIONS)
        spans.receiver(None, start, start + S, frames=0, stop_reason=None, close_code=1002)
        data.write_segment(spans.rows(ingested_at_ns=start + 60 * S))
    return path


@pytest.fixture(scope="module")
def built(data_dir: Path) -> Path:
    result = runner.invoke(app, ["build", "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "full build #1" in result.output
    assert "3 calls evaluated" in result.output
    assert "1 new spans without a call id" in result.output
    return data_dir


def test_build_refuses_a_missing_data_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "is not a data directory" in result.output


def test_triage_shows_timeline_verdict_reason_next_step_and_jaeger_link(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLSCOPE_JAEGER_URL", "http://jaeger.example:16686/")
    result = runner.invoke(app, ["triage", "call_dropped", "--data", str(built)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "verdict: stream_dropped" in out
    assert (
        "reason: receiver closed with 1011 (internal error) 18.0 s before call.completed, without a stop"
        in out
    )
    assert "next step: The receiver ended the stream while the call went on" in out
    from collectors.identity import call_trace_id_hex

    assert f"jaeger: http://jaeger.example:16686/trace/{call_trace_id_hex('call_dropped')}" in out
    for event in ("call.initiated", "answer_url", "connection_open", "connection_closed", "call.completed"):
        assert event in out
    assert out.index("connection_closed") < out.index("call.completed")
    assert "1 stored spans have no call id" in out


def test_triage_of_an_unknown_call_suggests_close_matches(built: Path) -> None:
    result = runner.invoke(app, ["triage", "call_dropd", "--data", str(built)])
    assert result.exit_code == 1
    assert "no call 'call_dropd'" in result.output
    assert "Did you mean: call_dropped" in result.output


def test_triage_of_a_call_not_built_yet_says_to_build(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data", fsync=False)
    with span_factory() as spans:
        spans.ok_call("call_new")
        data.write_segment(spans.rows())
    result = runner.invoke(app, ["triage", "call_new", "--data", str(data.path)])
    assert result.exit_code == 1
    assert "has 6 spans but no timeline yet" in result.output
    assert "callscope build" in result.output


def test_sql_formats(built: Path) -> None:
    query = "SELECT call_id, verdict FROM calls ORDER BY call_id"
    table = runner.invoke(app, ["sql", query, "--data", str(built)])
    assert table.exit_code == 0, table.output
    assert "call_dropped" in table.output and "3 rows" in table.output
    csv = runner.invoke(app, ["sql", query, "--data", str(built), "--format", "csv"])
    assert csv.output.splitlines() == [
        "call_id,verdict",
        "call_dropped,stream_dropped",
        "call_invalid,invalid_action",
        "call_ok,ok",
    ]
    rows = json.loads(runner.invoke(app, ["sql", query, "--data", str(built), "--format", "json"]).output)
    assert rows[2] == {"call_id": "call_ok", "verdict": "ok"}


def test_sql_refuses_writes_and_outside_files_with_exit_2(built: Path) -> None:
    for query in ("DELETE FROM calls", "SELECT * FROM read_csv('/etc/passwd')"):
        result = runner.invoke(app, ["sql", query, "--data", str(built)])
        assert result.exit_code == 2
        assert "refused:" in result.output


def test_sql_error_exit_1(built: Path) -> None:
    result = runner.invoke(app, ["sql", "SELECT nope FROM calls", "--data", str(built)])
    assert result.exit_code == 1
    assert "error:" in result.output


def test_check_exits_1_over_the_failure_rate_and_0_within(built: Path) -> None:
    over = runner.invoke(app, ["check", "--since", "1h", "--max-failure-rate", "0.05", "--data", str(built)])
    assert over.exit_code == 1, over.output
    assert "stream_dropped" in over.output and "invalid_action" in over.output
    assert "failure rate 66.7% of 3 judged calls (OVER the limit 5.0%)" in over.output
    within = runner.invoke(app, ["check", "--since", "1h", "--max-failure-rate", "0.7", "--data", str(built)])
    assert within.exit_code == 0, within.output
    empty = runner.invoke(app, ["check", "--since", "30s", "--data", str(built)])
    assert empty.exit_code == 0 and "failure rate 0.0% of 0 judged calls" in empty.output


@pytest.mark.parametrize("since", ["15x", "-5m", "soon", "0m"])
def test_check_rejects_a_bad_since_clearly(built: Path, since: str) -> None:
    result = runner.invoke(app, ["check", "--since", since, "--data", str(built)])
    assert result.exit_code == 2
    assert "--since" in result.output


def test_a_duckdb_shell_reads_every_view_from_another_directory(built: Path, tmp_path: Path) -> None:
    # The shell a user has may be older than the Python package that wrote callscope.duckdb
    # (duckdb-cli 1.5 against duckdb 2.0 here): the file is in the 1.0 storage format and the
    # views use nothing newer, so a newer writer's file does not lock them out.
    query = (
        "select (select count(*) from calls), (select count(*) from call_events), "
        "(select count(*) from spans), (select count(*) from unattributed_spans), "
        "(select verdict from calls where call_id = 'call_dropped')"
    )
    relative = os.path.relpath(built / "callscope.duckdb", tmp_path)
    output = shell_query(relative, query, cwd=tmp_path)
    calls, events, spans, unattributed, verdict = output.split(",")
    assert (int(calls), int(unattributed), verdict) == (3, 1, "stream_dropped")
    assert int(events) > int(calls) and int(spans) >= 7
