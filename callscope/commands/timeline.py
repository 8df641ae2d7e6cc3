"""Timeline commands: build (timelines and verdicts), triage, sql, check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

if TYPE_CHECKING:
    from pipeline.settings import Settings

DATA_HELP = "Data directory (default: $CALLSCOPE_DATA or ./callscope-data)."


def _settings(data: Path | None, **overrides: Any) -> Settings:
    from pipeline.settings import Settings, SettingsError

    try:
        return Settings.from_environ().with_overrides(data_dir=data, **overrides)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _existing_data(settings: Settings) -> Any:
    from pipeline.storage import DataDir

    if not settings.data_dir.is_dir():
        raise typer.BadParameter(
            f"{settings.data_dir} is not a data directory (start `callscope ingest --data DIR` first)",
            param_hint="--data",
        )
    return DataDir(settings.data_dir)


def build(
    data: Annotated[Path | None, typer.Option("--data", help=DATA_HELP)] = None,
    *,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep running: apply new spans every --interval seconds.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between --follow steps.", min=0.1)
    ] = 2.0,
    full: Annotated[bool, typer.Option("--full", help="Rebuild everything from the spans.")] = False,
    grace: Annotated[
        int | None,
        typer.Option(
            "--grace", help="Seconds to wait for call.completed (default $CALLSCOPE_GRACE_SECONDS or 300)."
        ),
    ] = None,
    memory_limit: Annotated[
        str, typer.Option("--memory-limit", help="DuckDB memory for the build; beyond it, it spills to disk.")
    ] = "1700MB",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Join the spans into one timeline per call and name the step where each call failed.

    Writes DATA/calls (Parquet, views in DATA/callscope.duckdb; the call_events view derives each
    call's timeline from its spans), counts spans without a call id in DATA/unattributed_spans,
    and emits each final call's `minivoice.call` root span to $CALLSCOPE_OTLP_ENDPOINTS. After the
    first run only new spans are applied; with --follow a failed step (a compacted segment, a full
    disk) is reported and tried again at the next tick.

    Example: callscope build --data ./callscope-data --follow --interval 2
    """
    import threading

    from pipeline.timeline import BuildSummary, TimelineError, open_timeline

    settings = _settings(data, grace_seconds=grace)
    _existing_data(settings)

    def report(summary: BuildSummary) -> None:
        if not quiet:
            for line in summary.lines():
                typer.echo(line)

    try:
        with open_timeline(settings, memory_limit=memory_limit) as timeline:
            if not follow:
                report(timeline.build(full=full))
                return
            stop = threading.Event()
            if not quiet:
                typer.echo(f"following {settings.data_dir} every {interval:g} s (Ctrl+C to stop)", err=True)

            def failed(exc: BaseException) -> None:
                # Transient (a compacted segment, a full disk): the next tick tries again.
                typer.echo(f"callscope build: step failed, trying again in {interval:g} s: {exc}", err=True)

            try:
                timeline.follow(interval, stop=stop, on_step=report, on_error=failed, full=full)
            except KeyboardInterrupt:
                stop.set()
    except TimelineError as exc:
        typer.echo(f"callscope build: {exc}", err=True)
        raise typer.Exit(1) from exc


def _when(value: Any) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3] if value is not None else "-"


def triage(
    call_id: Annotated[str, typer.Argument(help="The MiniVoice call id.")],
    data: Annotated[Path | None, typer.Option("--data", help=DATA_HELP)] = None,
) -> None:
    """Show one call's timeline, its verdict, the reason, the next step and the Jaeger link.

    Times are UTC; receiver times are corrected for the receiver's clock skew when one was detected.

    Example: callscope triage call_123 --data ./callscope-data
    """
    from rich.console import Console
    from rich.table import Table

    from pipeline import queries

    settings = _settings(data)
    directory = _existing_data(settings)
    console = Console(highlight=False)
    with directory.connect_readonly() as con:
        con.execute("SET TimeZone = 'UTC'")
        call = queries.call_row(con, call_id)
        if call is None:
            spans = queries.call_span_count(con, call_id)
            if spans:
                typer.echo(
                    f"call {call_id!r} has {spans} spans but no timeline yet: run "
                    f"`callscope build --data {settings.data_dir}`"
                )
                raise typer.Exit(1)
            matches = queries.close_matches(con, call_id)
            hint = f" Did you mean: {', '.join(matches)}?" if matches else " Check the call id and --data."
            typer.echo(f"no call {call_id!r} in {settings.data_dir}.{hint}")
            raise typer.Exit(1)
        points = queries.call_timeline(con, call_id, call)
        unattributed = queries.unattributed_count(con)

    first = points[0]["ts"] if points else None
    day = first.strftime("%Y-%m-%d") if first else ""
    table = Table(title=f"call {call_id} ({day} UTC)", title_justify="left", expand=False)
    table.add_column("time", no_wrap=True)
    table.add_column("+s", justify="right", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("detail")
    styles = {"answer_url": "cyan", "receiver": "magenta", "webhook": "blue", "pipeline": "bold"}
    for point in points:
        offset = (point["ts"] - first).total_seconds() if first and point["ts"] else 0.0
        table.add_row(
            _when(point["ts"]),
            f"{offset:.3f}",
            point["source"],
            point["event"],
            point["detail"] or "",
            style=styles.get(point["source"]),
        )
    console.print(table)
    failed = call["failure_stage"] not in (None, "none")
    colour = "red" if failed else "green"
    final = "final" if call["is_final"] else "not final yet"
    console.print(f"[bold {colour}]verdict: {call['verdict']}[/] (stage {call['failure_stage']}, {final})")
    console.print(f"reason: {call['reason']}", markup=False)
    console.print(f"next step: {call['next_step']}", markup=False)
    facts = [
        (
            "call",
            f"{call['direction'] or '?'} {call['call_status'] or '?'}, "
            f"customer {call['customer_id'] or '?'}, application {call['application_id'] or '?'}",
        ),
        ("stream_url", f"{call['stream_url'] or '-'} (track {call['track'] or '-'})"),
        (
            "media",
            f"{call['media_frames']} frames, largest gap {call['media_gap_max_ms']} ms"
            if call["receiver_connections"]
            else "no receiver connection recorded",
        ),
        ("webhooks", f"{call['webhook_count']} deliveries, {call['duplicate_webhooks']} duplicates"),
    ]
    if call["receiver_clock_skew_ms"]:
        facts.append(
            (
                "receiver clock",
                f"{call['receiver_clock_skew_ms']:+d} ms vs the webhook clock (corrected above)",
            )
        )
    for label, text in facts:
        console.print(f"{label}: {text}", markup=False)
    console.print(f"jaeger: {settings.jaeger_url}/trace/{call['trace_id']}", markup=False)
    if unattributed:
        console.print(
            f"note: {unattributed} stored spans have no call id and are in no timeline "
            '(callscope sql "select * from unattributed_spans")',
            markup=False,
        )


def sql(
    query: Annotated[str, typer.Argument(help="One read-only statement (SELECT, WITH, DESCRIBE, ...).")],
    data: Annotated[Path | None, typer.Option("--data", help=DATA_HELP)] = None,
    output_format: Annotated[
        Literal["table", "csv", "json"], typer.Option("--format", help="Output format.")
    ] = "table",
    max_rows: Annotated[
        int, typer.Option("--max-rows", help="Rows shown in table format (csv/json: all).", min=1)
    ] = 200,
) -> None:
    """Run one read-only SQL query over the views: calls, call_events, spans, unattributed_spans.

    Writes, COPY, ATTACH, INSTALL/LOAD and files outside the data directory are refused.

    Example: callscope sql "select verdict, count(*) from calls group by all" --format csv
    """
    from rich.console import Console
    from rich.table import Table

    from pipeline.sql import SQLError, SQLRefused, format_csv, format_json, run_query

    settings = _settings(data)
    directory = _existing_data(settings)
    try:
        result = run_query(directory, query, max_rows=max_rows if output_format == "table" else None)
    except SQLRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    except SQLError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if output_format == "csv":
        sys.stdout.write(format_csv(result))
        return
    if output_format == "json":
        sys.stdout.write(format_json(result) + "\n")
        return
    table = Table(show_lines=False)
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console(highlight=False)
    console.print(table)
    more = " (more rows not shown: use --max-rows or --format csv)" if result.truncated else ""
    console.print(f"{len(result.rows)} rows{more}", markup=False)


def check(
    since: Annotated[
        str, typer.Option("--since", help="Window: calls active in the last 90s/15m/2h/1d.")
    ] = "15m",
    max_failure_rate: Annotated[
        float,
        typer.Option("--max-failure-rate", help="Exit 1 above this share of failed calls.", min=0.0, max=1.0),
    ] = 0.05,
    data: Annotated[Path | None, typer.Option("--data", help=DATA_HELP)] = None,
) -> None:
    """Print the verdict breakdown of recent calls; exit 1 when the failure rate is over the limit.

    For cron and alerting. The rate is failed calls over calls with a verdict (in_progress excluded).

    Example: callscope check --since 15m --max-failure-rate 0.05
    """
    from datetime import UTC, datetime

    from pipeline import queries
    from pipeline.rules import FAILURE_VERDICTS

    try:
        window = queries.parse_duration(since)
    except queries.DurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from exc
    settings = _settings(data)
    directory = _existing_data(settings)
    until = datetime.now(UTC)
    with directory.connect_readonly() as con:
        breakdown = queries.verdict_breakdown(con, until - window, until)
    typer.echo(f"calls active since {since} ago: {breakdown.total}")
    for verdict, count in sorted(breakdown.by_verdict.items(), key=lambda kv: (-kv[1], kv[0])):
        marker = "  failure" if verdict in FAILURE_VERDICTS else ""
        typer.echo(f"  {verdict:<22} {count:>8}{marker}")
    if breakdown.unattributed:
        typer.echo(f"spans without a call id in the window: {breakdown.unattributed}")
    rate = breakdown.failure_rate
    over = rate > max_failure_rate
    typer.echo(
        f"failure rate {rate:.1%} of {breakdown.judged} judged calls "
        f"({'OVER' if over else 'within'} the limit {max_failure_rate:.1%})"
    )
    raise typer.Exit(1 if over else 0)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the CLI."""
    app.command()(build)
    app.command()(triage)
    app.command(name="sql")(sql)
    app.command()(check)
