"""Benchmark: `callscope demo --calls N --no-dashboard` wall time (goal: 200 calls in under 60 s).

Measures, in the same run and on the same machine:

- **demo**: the whole command in a fresh process (`callscope demo --calls N --no-dashboard`,
  ingest on a free port, a fresh data directory): imports, ingest, the demo app with collectors,
  N simulated calls, flush, the grace period, the build, the summary;
- **baseline**: the same N calls placed by the simulator against the same demo app with no
  exporter, no ingest and no build: the cost of the calls themselves.

Prints the medians of `--repeat` runs, the demo's own phase timings, and the ratio.

    .venv/bin/python bench/demo.py [--calls 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_demo_command(calls: int) -> tuple[float, str]:
    """Wall time of one `callscope demo` process, and its output."""
    with tempfile.TemporaryDirectory(prefix="callscope-bench-demo-") as tmp:
        command = [
            str(Path(sys.executable).with_name("callscope")),
            "demo",
            "--calls",
            str(calls),
            "--no-dashboard",
            "--ingest-port",
            "0",
            "--data",
            str(Path(tmp) / "data"),
        ]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"callscope demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout


async def _baseline(calls: int) -> float:
    from opentelemetry.sdk.trace import TracerProvider

    from simulator.demo import DemoOptions
    from simulator.demo_app import DemoApp, DemoAppConfig
    from simulator.platform import Platform
    from simulator.runner import run_calls
    from simulator.scenarios import demo_mix

    options = DemoOptions(calls=calls)
    provider = TracerProvider()  # spans are made, but go nowhere
    config = DemoAppConfig(tracer_provider=provider, answer_url_stall_s=options.answer_url_stall_s)
    async with DemoApp(config) as app:
        started = time.perf_counter()
        async with Platform(options.platform_config(app)) as platform:
            await run_calls(platform, demo_mix(calls), concurrency=options.concurrency)
        elapsed = time.perf_counter() - started
    provider.shutdown()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    demo_times, baseline_times = [], []
    last_output = ""
    for _ in range(args.repeat):
        baseline_times.append(asyncio.run(_baseline(args.calls)))
        elapsed, last_output = run_demo_command(args.calls)
        demo_times.append(elapsed)
    accuracy = re.search(r"verdict accuracy (\d+/\d+)", last_output)
    phases = re.search(r"calls and grace ([\d.]+) s, build ([\d.]+) s, total ([\d.]+) s", last_output)
    demo, baseline = statistics.median(demo_times), statistics.median(baseline_times)
    print(f"calls: {args.calls}, runs: {args.repeat} (medians)")
    print(f"baseline (simulator + demo app, no export/ingest/build): {baseline:6.2f} s")
    print(f"callscope demo --no-dashboard (whole process):         {demo:6.2f} s  (goal < 60 s)")
    print(f"ratio demo / baseline: {demo / baseline:.1f}x")
    if phases:
        print(
            f"last demo run's phases: calls and grace {phases[1]} s, build {phases[2]} s, total {phases[3]} s"
        )
    print(f"verdict accuracy (last run): {accuracy[1] if accuracy else 'not printed'}")
    print("all runs, demo:", ", ".join(f"{t:.1f}" for t in demo_times))
    print("all runs, baseline:", ", ".join(f"{t:.1f}" for t in baseline_times))


if __name__ == "__main__":
    main()
