"""Simulator commands: `callscope demo` (the whole product in one command) and `callscope test-call`.

The logic lives in `simulator.demo` and `simulator.testcall`; these functions parse options,
print, and turn errors into messages that say what to change.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from simulator.demo import DemoResult
    from simulator.outcome import CallOutcome, Step
    from simulator.verdict import PlatformVerdict

HOST = "127.0.0.1"


def demo(
    calls: Annotated[int, typer.Option("--calls", min=1, help="Number of calls to place.")] = 200,
    *,
    no_dashboard: Annotated[
        bool, typer.Option("--no-dashboard", help="Print the summary and exit; don't start the dashboard.")
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Data directory (default: $CALLSCOPE_DATA or ./callscope-data)."),
    ] = None,
    ingest_port: Annotated[
        int, typer.Option("--ingest-port", min=0, max=65535, help="OTLP/HTTP ingest port (0: any free one).")
    ] = 4318,
    app_port: Annotated[
        int,
        typer.Option(
            "--app-port", min=0, max=65535, help="Demo app's answer_url/webhook port (0: any free one)."
        ),
    ] = 0,
    receiver_port: Annotated[
        int,
        typer.Option(
            "--receiver-port", min=0, max=65535, help="Demo app's wss receiver port (0: any free one)."
        ),
    ] = 0,
    dashboard_port: Annotated[
        int, typer.Option("--dashboard-port", min=1, max=65535, help="Dashboard port.")
    ] = 8501,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Calls in flight at once.")] = 50,
    speed: Annotated[
        float, typer.Option("--speed", min=0.1, help="Media time acceleration (1: real time).")
    ] = 5.0,
) -> None:
    """Run the whole product here: simulated calls -> collectors -> ingest -> verdicts -> dashboard.

    Places N calls (mostly happy, every fault scenario at least once), builds the timelines,
    and prints the verdict counts and the verdict accuracy against the simulator's ground truth.
    Exits 1 if any verdict is wrong. Then serves the dashboard until Ctrl+C, unless
    --no-dashboard.

    Example: callscope demo --calls 200 --no-dashboard
    """
    from rich.console import Console

    from pipeline.settings import Settings, SettingsError
    from simulator.demo import DemoOptions, run_demo
    from simulator.serving import PortInUse, bind_port

    console = Console(highlight=False, soft_wrap=True)
    try:
        settings = Settings.from_environ().with_overrides(data_dir=data)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    options = DemoOptions(
        calls=calls,
        data_dir=settings.data_dir,
        host=HOST,
        ingest_port=ingest_port,
        app_port=app_port,
        receiver_port=receiver_port,
        concurrency=concurrency,
        speed=speed,
    )
    with _demo_process_state():
        try:
            if not no_dashboard:
                bind_port(HOST, dashboard_port, "--dashboard-port").close()  # fail now, not after the run
            result = run_demo(options, progress=lambda message: console.print(f"[dim]·[/dim] {message}"))
        except PortInUse as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: everything is shut down")
            raise typer.Exit(130) from None
        _print_summary(console, result)
        exit_code = 0 if result.correct == result.total else 1
        if not no_dashboard:
            _serve_dashboard(console, settings.data_dir, dashboard_port)
    raise typer.Exit(exit_code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _demo_process_state() -> Iterator[None]:
    """SIGTERM handled like Ctrl+C, and a demo PII key; both restored afterwards."""
    # `kill` (SIGTERM) shuts down as cleanly as Ctrl+C: servers stopped, no orphan dashboard.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # The demo's phone numbers are fake; a demo key lets its dashboard show search by number.
    had_key = "CALLSCOPE_PII_KEY" in os.environ
    os.environ.setdefault("CALLSCOPE_PII_KEY", "callscope-demo-key")
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not had_key:
            os.environ.pop("CALLSCOPE_PII_KEY", None)


def _print_summary(console: Console, result: DemoResult) -> None:
    from collections import Counter

    from rich.table import Table

    for line in result.build_summary:
        console.print(f"[dim]· {line}[/dim]")
    expected = Counter(o.expected_verdict for o in result.outcomes)
    counts = result.verdict_counts()
    table = Table(title=f"{result.total} calls", title_justify="left")
    table.add_column("verdict")
    table.add_column("calls", justify="right")
    table.add_column("expected", justify="right")
    for verdict in sorted(set(counts) | set(expected), key=lambda v: (-counts.get(v, 0), v)):
        table.add_row(verdict, str(counts.get(verdict, 0)), str(expected.get(verdict, 0)))
    console.print(table)
    skews = result.skews()
    if skews:
        sample = next(iter(skews.values()))
        console.print(f"receiver clock skew reported on {len(skews)} call(s), e.g. {sample:+.0f} ms")
    colour = "green" if result.correct == result.total else "red"
    console.print(
        f"[bold {colour}]verdict accuracy {result.correct}/{result.total}[/] "
        "against the simulator's ground truth"
    )
    mismatches = result.mismatches
    if mismatches:
        table = Table(title="mismatches", title_justify="left")
        for column in ("call_id", "scenario", "expected", "got", "reason"):
            table.add_column(column)
        for m in mismatches[:50]:
            table.add_row(m.call_id, m.scenario, m.expected, str(m.actual), str(m.reason or ""))
        console.print(table)
    timings = result.timings
    console.print(
        f"[dim]calls and grace {timings.get('calls', 0):.1f} s, build {timings.get('build', 0):.1f} s, "
        f"total {timings.get('total', 0):.1f} s[/dim]"
    )


def _serve_dashboard(console: Console, data_dir: Path, port: int) -> None:
    import subprocess

    from dashboard.server import DashboardStartError, dashboard_url, launch, wait_until_ready

    url = dashboard_url(port, HOST)
    process = launch(data_dir, port, address=HOST, quiet=True)
    try:
        wait_until_ready(process, url, timeout=60)
        console.print(f"dashboard: [bold]{url}[/bold]  (Ctrl+C to stop)")
        process.wait()
    except KeyboardInterrupt:
        console.print("stopping the dashboard")
    except DashboardStartError as exc:
        console.print(f"[red]error:[/red] {exc}")
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_call_command(
    answer_url: Annotated[str, typer.Option("--answer-url", help="Your answer_url (http or https).")],
    *,
    webhook_url: Annotated[
        str | None,
        typer.Option("--webhook-url", help="Your webhook endpoint; without it no webhooks are sent."),
    ] = None,
    scenario: Annotated[
        str, typer.Option("--scenario", help="A simulator scenario (see docs/simulator.md).")
    ] = "happy",
    seconds: Annotated[float, typer.Option("--seconds", min=0.0, help="Seconds of audio to stream.")] = 5.0,
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca", exists=True, dir_okay=False, help="Extra CA certificate (PEM) to trust for https/wss."
        ),
    ] = None,
    timeout_ms: Annotated[
        int | None,
        typer.Option(
            "--timeout-ms",
            min=1,
            help="answer_url timeout (default: $CALLSCOPE_ANSWER_URL_TIMEOUT_MS or 5000).",
        ),
    ] = None,
) -> None:
    """Play one MiniVoice call against your real endpoints (e.g. staging) and judge it.

    POSTs the call to the answer_url, checks the returned actions the way MiniVoice does,
    connects to the stream_url, streams audio in real time, stops, closes with 1000 and delivers
    the webhooks, printing each step as it happens; then prints the verdict, the reason and the
    next step. Exits 0 only when the verdict is ok.

    Example: callscope test-call --answer-url https://staging.example.com/answer --seconds 5
    """
    import asyncio

    from rich.console import Console

    from collectors.privacy import redact_url
    from pipeline.settings import Settings, SettingsError
    from simulator.scenarios import SCENARIOS
    from simulator.testcall import TestCallOptions, place_test_call

    for option, url in (("--answer-url", answer_url), ("--webhook-url", webhook_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            raise typer.BadParameter(f"{url!r} is not an http(s) URL", param_hint=option)
    if scenario not in SCENARIOS:
        raise typer.BadParameter(
            f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}", param_hint="--scenario"
        )
    try:
        settings = Settings.from_environ()
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    timeout_s = (timeout_ms or settings.answer_url_timeout_ms) / 1000
    console = Console(highlight=False, soft_wrap=True)
    options = TestCallOptions(
        answer_url=answer_url,
        webhook_url=webhook_url,
        scenario=scenario,
        seconds=seconds,
        ca_file=ca,
        answer_url_timeout_s=timeout_s,
    )
    console.print(f"test call ({scenario}) to {redact_url(answer_url)}")
    try:
        outcome, verdict = asyncio.run(place_test_call(options, _step_printer(console)))
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None
    _print_verdict(console, outcome, verdict, webhooks=webhook_url is not None)
    raise typer.Exit(0 if verdict.ok else 1)


def _step_printer(console: Console) -> Any:
    def observe(outcome: CallOutcome, step: Step) -> None:
        mark = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
        console.print(f" {mark} {step.stage:<10} {step.message}", soft_wrap=True)

    return observe


def _print_verdict(
    console: Console, outcome: CallOutcome, verdict: PlatformVerdict, *, webhooks: bool
) -> None:
    colour = "green" if verdict.verdict in ("ok", "no_stream") else "red"
    console.print(f"call id: {outcome.call_id}")
    console.print(f"verdict: [bold {colour}]{verdict.verdict}[/] (stage {verdict.failure_stage})")
    console.print(f"reason: {verdict.reason}", soft_wrap=True)
    console.print(f"next step: {verdict.next_step}", soft_wrap=True)
    if verdict.ok:
        console.print(
            "[dim]The platform's side is fine. Whether your receiver processed the media is in its own log "
            "(or in callscope, if your services run the collectors).[/dim]",
            soft_wrap=True,
        )
    if not webhooks:
        console.print("[dim]No --webhook-url: webhook delivery was not tested.[/dim]")


def register(app: typer.Typer) -> None:
    """Add `callscope demo` and `callscope test-call` to the CLI."""
    app.command()(demo)
    app.command("test-call")(test_call_command)
