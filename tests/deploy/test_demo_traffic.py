"""The compose `demo` service's program, run as its own process against a live ingest.

It is configured only through the OTel variables compose gives it, exactly as in the container,
and its spans must arrive: every source (answer_url, receiver, webhook) for every call placed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.ingest import running_ingest
from pipeline.storage import DataDir
from simulator.scenarios import demo_mix
from tests.deploy.deployment import DEPLOY, command_args, services

SCRIPT = DEPLOY / "demo_traffic.py"


def test_the_demo_service_sends_every_sources_spans_through_otel_variables(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_ingest(data_dir, fsync=False, wal_file_age_s=0.2) as ingest:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": ingest.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "CALLSCOPE_ANSWER_URL_TIMEOUT_MS": "400",
        }
        for name in ("CALLSCOPE_OTLP_ENDPOINTS", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
            env.pop(name, None)
        args = [
            "--calls",
            "24",
            "--rounds",
            "1",
            "--speed",
            "50",
            "--media-seconds",
            "0.4",
            "--concurrency",
            "24",
        ]
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert "round 1: 24 calls placed" in result.stderr

    con = DataDir(data_dir).connect_readonly()
    try:
        rows = con.execute(
            "SELECT call_id, list(DISTINCT source ORDER BY source), any_value(service_name) "
            "FROM spans WHERE call_id IS NOT NULL GROUP BY call_id"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 24
    assert {service for _, _, service in rows} == {"minivoice-demo-app"}
    # Every call's answer_url and webhooks were recorded; streams only where the scenario opens one.
    # Every call's webhooks were recorded, every answered call's answer_url, and the streams of
    # most (the scenarios that never reach the receiver have none).
    unanswered = sum(not scenario.answered for scenario in demo_mix(24))
    assert unanswered >= 1
    assert all("webhook" in sources for _, sources, _ in rows)
    assert sum("answer_url" in sources for _, sources, _ in rows) == 24 - unanswered
    assert sum("receiver" in sources for _, sources, _ in rows) >= 12


def test_compose_runs_the_demo_script_with_options_it_accepts() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_traffic", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (demo,) = [s for s in services().values() if "demo" in (s.get("profiles") or [])]
    entrypoint = demo["entrypoint"]
    assert entrypoint[0] == "python"
    mounted = {m.split(":")[1]: m.split(":")[0] for m in demo["volumes"] if m.startswith("./")}
    assert Path(mounted[entrypoint[1]]).name == SCRIPT.name
    options = module.parser().parse_args(command_args(demo))  # exits (SystemExit) on a bad option
    assert options.rounds == 0, "the compose demo keeps placing calls"
