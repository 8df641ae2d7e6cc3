"""`callscope demo`: simulated MiniVoice calls -> demo app with collectors -> ingest -> verdicts.

The whole product in one process, on loopback:

1. start callscope ingest (`pipeline.ingest.running_ingest`) on `--ingest-port`;
2. point the collectors at it (`collectors.configure`) and start the demo customer app
   (`simulator.demo_app`);
3. place N calls with the simulator: mostly happy, every scenario at least once;
4. flush the collectors' exporters, wait out the grace period (short in the demo, and set the
   same for the simulator and the pipeline through `pipeline.settings.Settings`), stop ingest
   (which rolls everything it acknowledged into segments);
5. build the timelines and verdicts (`pipeline.timeline`), and score each call's verdict
   against the simulator's ground truth.

Every server binds its port before anything starts, so a busy port fails fast with a message
naming the port and the option that changes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

import collectors
from pipeline.settings import Settings
from simulator.demo_app import DemoApp, DemoAppConfig
from simulator.outcome import CallOutcome
from simulator.platform import Platform, PlatformConfig
from simulator.runner import run_calls
from simulator.scenarios import Scenario, demo_mix
from simulator.serving import bind_port

Progress = Callable[[str], None]

DEMO_SERVICE = "minivoice-demo-app"
"""`service.name` of the demo customer app's spans."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Everything `callscope demo` can change. Ports 0 pick free ports."""

    calls: int = 200
    data_dir: Path = Path("callscope-data")
    host: str = "127.0.0.1"
    ingest_port: int = 4318
    app_port: int = 0
    receiver_port: int = 0
    concurrency: int = 50
    media_seconds: float = 2.0
    """Audio per streamed call."""
    speed: float = 5.0
    """Time acceleration of the media stream (5: 2 s of audio in 0.4 s). Much faster, and a
    receiver that closes early may read MiniVoice's whole stream, stop included, before its own
    close goes out: then the stream did not end early."""
    answer_url_timeout_ms: int = 2000
    """The platform's answer_url timeout, and the pipeline's: one setting for both."""
    grace_seconds: int = 2
    """How long after a call's last activity `call.completed` may still arrive."""
    settle_seconds: int = 1
    """How long after `call.completed` late spans may still change a verdict."""
    receiver_clock_offset_ms: int = -4000
    scenarios: tuple[Scenario, ...] | None = None
    """Explicit call list (tests); None: `demo_mix(calls)`."""
    ingest_fsync: bool = True

    @property
    def answer_url_stall_s(self) -> float:
        """How long the `answer_url_timeout` scenario's answer_url stalls: past the timeout."""
        return self.answer_url_timeout_ms / 1000 + 0.5

    def platform_config(self, app: DemoApp) -> PlatformConfig:
        """How the simulated MiniVoice reaches `app`, with this run's timing."""
        return app.platform_config(
            answer_url_timeout_s=self.answer_url_timeout_ms / 1000,
            media_seconds=self.media_seconds,
            speed=self.speed,
        )

    def settings(self, base: Settings | None = None) -> Settings:
        """The pipeline settings for this run: the demo's data dir, grace and answer_url timeout."""
        return (base or Settings.from_environ()).with_overrides(
            data_dir=self.data_dir,
            grace_seconds=self.grace_seconds,
            answer_url_timeout_ms=self.answer_url_timeout_ms,
        )


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A call whose verdict differs from the simulator's ground truth."""

    call_id: str
    scenario: str
    expected: str
    actual: str | None
    reason: str | None


@dataclass(slots=True)
class DemoResult:
    """What the demo did and how the verdicts scored."""

    outcomes: list[CallOutcome]
    verdicts: dict[str, dict[str, Any]]
    """The `calls` row of each simulated call, by call id."""
    timings: dict[str, float] = field(default_factory=dict)
    build_summary: list[str] = field(default_factory=list)
    """The build's own summary lines."""

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def mismatches(self) -> list[Mismatch]:
        """Calls whose verdict is not the scenario's expected verdict (missing calls included)."""
        found = []
        for outcome in self.outcomes:
            row = self.verdicts.get(outcome.call_id)
            actual = row.get("verdict") if row else None
            if actual != outcome.expected_verdict:
                reason = row.get("reason") if row else "no row in calls for this call id"
                found.append(
                    Mismatch(outcome.call_id, outcome.scenario, outcome.expected_verdict, actual, reason)
                )
        return found

    @property
    def correct(self) -> int:
        return self.total - len(self.mismatches)

    def verdict_counts(self) -> Counter[str]:
        """How many of the simulated calls got each verdict."""
        return Counter(
            str(self.verdicts[o.call_id].get("verdict")) if o.call_id in self.verdicts else "(missing)"
            for o in self.outcomes
        )

    def skews(self) -> dict[str, float]:
        """`receiver_clock_skew_ms` of the calls that report one."""
        return {
            call_id: float(row["receiver_clock_skew_ms"])
            for call_id, row in self.verdicts.items()
            if row.get("receiver_clock_skew_ms") not in (None, 0)
        }


def run_demo(options: DemoOptions, progress: Progress = lambda _m: None) -> DemoResult:
    """Run the whole demo pipeline once and score the verdicts. Blocking; cleans up on any exit."""
    from pipeline.ingest import running_ingest

    settings = options.settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.monotonic()
    if options.ingest_port:
        # Checked here, before ingest starts anything, so a busy port names its option.
        bind_port(options.host, options.ingest_port, "--ingest-port").close()
    with running_ingest(
        settings.data_dir, host=options.host, port=options.ingest_port, fsync=options.ingest_fsync
    ) as ingest:
        progress(f"ingest listening on {ingest.url} (data: {settings.data_dir})")
        provider = collectors.configure(service_name=DEMO_SERVICE, endpoints=[ingest.traces_url])
        try:
            outcomes = asyncio.run(_place_calls(options, provider, progress, timings))
            # The pipeline counts the grace (and settle) periods from when spans were ingested:
            # the final flush, just now.
            wait = max(options.grace_seconds, options.settle_seconds) + 0.5
            progress(f"waiting {wait:.1f} s: the grace period for late call.completed webhooks")
            time.sleep(wait)
        finally:
            # Flush and retire the exporting provider while ingest still listens, also on
            # Ctrl+C: otherwise its exporter retries against a closed port at exit.
            collectors.configure(service_name=DEMO_SERVICE, endpoints=[])
        progress("stopping ingest (rolling the write-ahead log into segments)")
    timings["calls"] = time.monotonic() - started
    progress("building timelines and verdicts")
    build_started = time.monotonic()
    verdicts, build_lines = build_verdicts(
        settings, [o.call_id for o in outcomes], settle_seconds=options.settle_seconds
    )
    timings["build"] = time.monotonic() - build_started
    timings["total"] = time.monotonic() - started
    return DemoResult(outcomes, verdicts, timings, build_lines)


async def _place_calls(
    options: DemoOptions, provider: TracerProvider, progress: Progress, timings: dict[str, float]
) -> list[CallOutcome]:
    stall_s = options.answer_url_stall_s
    app_config = DemoAppConfig(
        host=options.host,
        http_port=options.app_port,
        receiver_port=options.receiver_port,
        answer_url_stall_s=stall_s,
        receiver_clock_offset_ms=options.receiver_clock_offset_ms,
    )
    scenarios = list(options.scenarios) if options.scenarios is not None else demo_mix(options.calls)
    async with DemoApp(app_config) as app:
        progress(
            f"demo app: answer_url {app.answer_url}, webhooks {app.webhook_url}, "
            f"receiver wss://{options.host}:{app.receiver_port}"
        )
        config = options.platform_config(app)
        progress(f"placing {len(scenarios)} calls ({options.concurrency} at a time)")
        started = time.monotonic()
        async with Platform(config) as platform:
            outcomes = await run_calls(platform, scenarios, concurrency=options.concurrency)
        timings["place_calls"] = time.monotonic() - started
        # The stalled answer_url (answer_url_timeout) answers after the platform gave up; its
        # span must still be recorded before the app stops.
        await asyncio.sleep(max(0.0, stall_s - options.answer_url_timeout_ms / 1000) + 0.1)
    flushed = await asyncio.to_thread(provider.force_flush, 30_000)
    if not flushed:
        progress("warning: the collectors could not flush every span to ingest within 30 s")
    return outcomes


def build_verdicts(
    settings: Settings, call_ids: list[str], *, settle_seconds: int | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run the pipeline build over the data dir; the `calls` rows of `call_ids`, and its summary."""
    from pipeline import timeline
    from pipeline.rules import RulesConfig
    from pipeline.storage import DataDir

    overrides = {} if settle_seconds is None else {"settle_seconds": settle_seconds}
    summary = timeline.build(settings, config=RulesConfig.from_settings(settings, **overrides))
    with DataDir(settings.data_dir).connect_readonly() as connection:
        relation = connection.execute(
            "SELECT * FROM calls WHERE call_id IN (SELECT unnest(?::VARCHAR[]))", [call_ids]
        )
        columns = [d[0] for d in relation.description or ()]
        rows = relation.fetchall()
    by_id = {row[columns.index("call_id")]: dict(zip(columns, row, strict=True)) for row in rows}
    return by_id, summary.lines()
