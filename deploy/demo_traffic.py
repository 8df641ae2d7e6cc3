"""The `demo` compose profile: the demo customer app and the MiniVoice simulator, in one container.

Runs `simulator.demo_app.DemoApp` (a Starlette answer_url + webhook app and `wss` receivers, with
callscope's collectors installed) and places simulated MiniVoice calls against it in rounds:
every scenario of `simulator.scenarios` each round, the rest happy calls. The collectors export
through the standard OTel variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`), which
docker-compose.yml points at the otel-collector service, so the demo's spans take the same path
as a real customer's: collector -> ingest and Jaeger.

The app and the simulator share one process because the app makes its TLS CA at start-up and the
simulator must trust it; they talk over the container's loopback, as separate hosts would over
a network. Unlike `callscope demo` (one process with its own ingest and build, for a laptop), this
uses the deployment's ingest, build and dashboard.

    python deploy/demo_traffic.py --calls 30 --interval 20       # forever (the compose service)
    python deploy/demo_traffic.py --calls 30 --rounds 1          # one round, then exit
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence

import collectors
from pipeline.settings import Settings
from simulator.demo_app import DemoApp, DemoAppConfig
from simulator.outcome import CallOutcome
from simulator.platform import Platform
from simulator.runner import run_calls
from simulator.scenarios import demo_mix

logger = logging.getLogger("callscope.demo_traffic")

SERVICE_NAME = "minivoice-demo-app"
"""service.name of the demo app's spans, unless OTEL_SERVICE_NAME says otherwise."""


def parser() -> argparse.ArgumentParser:
    """The command line of the `demo` service."""
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument(
        "--calls", type=int, default=30, help="calls per round (every scenario at least once)"
    )
    arguments.add_argument("--rounds", type=int, default=0, help="rounds to place (0: until stopped)")
    arguments.add_argument("--interval", type=float, default=20.0, help="seconds between rounds")
    arguments.add_argument("--concurrency", type=int, default=10, help="calls in flight at once")
    arguments.add_argument("--media-seconds", type=float, default=4.0, help="seconds of audio per call")
    arguments.add_argument("--speed", type=float, default=2.0, help="media time acceleration (1: real time)")
    return arguments


async def place_rounds(options: argparse.Namespace, settings: Settings) -> list[CallOutcome]:
    """Start the demo app, place `options.rounds` rounds of calls (forever for 0), return the outcomes."""
    provider = collectors.configure(service_name=None)
    timeout_s = settings.answer_url_timeout_ms / 1000
    app_config = DemoAppConfig(answer_url_stall_s=timeout_s + 0.5, tracer_provider=provider)
    outcomes: list[CallOutcome] = []
    async with DemoApp(app_config) as app:
        config = app.platform_config(
            answer_url_timeout_s=timeout_s,
            media_seconds=options.media_seconds,
            speed=options.speed,
            webhook_backoff_s=0.5,
        )
        completed = 0
        async with Platform(config) as platform:
            while options.rounds == 0 or completed < options.rounds:
                placed = await run_calls(platform, demo_mix(options.calls), concurrency=options.concurrency)
                outcomes.extend(placed)
                completed += 1
                counts = Counter(o.expected_verdict for o in placed)
                logger.info(
                    "round %d: %d calls placed, expected verdicts %s", completed, len(placed), dict(counts)
                )
                if options.rounds == 0 or completed < options.rounds:
                    await asyncio.sleep(options.interval)
        # The stalled answer_url answers after the platform gave up; let its span end first.
        await asyncio.sleep(0.6)
    await asyncio.to_thread(provider.force_flush, 30_000)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: place the calls; exit 0 when every round ran (verdicts are the pipeline's job)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = parser().parse_args(argv)
    if options.calls < 1 or options.concurrency < 1 or options.rounds < 0:
        parser().error("--calls and --concurrency must be at least 1, --rounds at least 0")
    os.environ.setdefault("OTEL_SERVICE_NAME", SERVICE_NAME)
    try:
        asyncio.run(place_rounds(options, Settings.from_environ()))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
