"""Collector-side commands: validate, backfill."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def validate(
    file: str = typer.Argument(..., help="A file holding the answer_url response body, or - for stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print the problems as JSON."),
) -> None:
    """Validate an answer_url response the way MiniVoice does.

    Exits 0 when MiniVoice would accept the actions, 1 when it would not.

    Example: curl -s https://app.example.com/answer | callscope validate -
    """
    from collectors.actions import ACCEPTED_RESULT, check_actions

    try:
        body = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from exc
    result = check_actions(body)
    if as_json:
        typer.echo(json.dumps({"valid": result.valid, "problems": [p.as_dict() for p in result.problems]}))
    elif result.valid:
        typer.echo(json.dumps({"result": ACCEPTED_RESULT}))
    else:
        for problem in result.problems:
            where = "" if problem.index is None else f"actions[{problem.index}]"
            where += f".{problem.field}" if problem.field and where else (problem.field or "")
            typer.echo(f"{problem.code:<22} {where or '(body)':<22} {problem.message}")
    raise typer.Exit(0 if result.valid else 1)


#: Exit codes of `callscope backfill`.
EXIT_BAD_LINES = 1
EXIT_NOT_DELIVERED = 3
MAX_BAD_LINES_SHOWN = 50


def backfill(
    answer_url: Annotated[
        Path | None,
        typer.Option("--answer-url", metavar="FILE", help="JSON-lines log of the answer_url collector."),
    ] = None,
    receiver: Annotated[
        Path | None,
        typer.Option("--receiver", metavar="FILE", help="JSON-lines log of the stream receiver collector."),
    ] = None,
    webhooks: Annotated[
        Path | None,
        typer.Option("--webhooks", metavar="FILE", help="JSON-lines log of the webhook collector."),
    ] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--endpoint",
            metavar="URL",
            help="OTLP/HTTP traces URL; repeat for several. Default: CALLSCOPE_OTLP_ENDPOINTS, "
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, then localhost:4318.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Re-emit spans from the collectors' JSON log lines, with their original timestamps.

    Reads the logs written by the answer_url, receiver and webhook collectors
    (docs/collector-logs.md) and sends each good line as a span over OTLP/HTTP. A bad line is
    reported as FILE:LINE: reason and skipped; every good line is sent. Original span ids are
    kept, so backfilling the same file twice stores one copy.

    Exit codes: 0 all lines sent; 1 some lines were bad (the good ones were sent);
    3 the exporter could not deliver every span (endpoint down or refusing); 2 usage error.

    Example: callscope backfill --answer-url logs/answer_url.jsonl --webhooks logs/webhooks.jsonl
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from collectors import backfill as library
    from collectors.privacy import pii_key
    from collectors.tracing import ConfigurationError, resolve_endpoints

    files = [
        (source, path)
        for source, path in (("answer_url", answer_url), ("receiver", receiver), ("webhook", webhooks))
        if path is not None
    ]
    if not files:
        raise typer.BadParameter("give at least one of --answer-url, --receiver, --webhooks")
    for source, path in files:
        if not path.is_file():
            option = "--webhooks" if source == "webhook" else "--" + source.replace("_", "-")
            raise typer.BadParameter(f"{path} is not a readable file", param_hint=option)
    try:
        endpoints = resolve_endpoints(endpoint)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--endpoint") from exc
    if not endpoints:
        raise typer.BadParameter("no endpoint to send to", param_hint="--endpoint")
    errors = Console(stderr=True, highlight=False)
    shown = 0

    def report(bad: library.BadLine) -> None:
        nonlocal shown
        shown += 1
        if shown <= MAX_BAD_LINES_SHOWN:
            errors.print(str(bad), markup=False, soft_wrap=True)

    bar = Progress(
        TextColumn("backfill"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=errors,
        disable=not progress,
        transient=True,
    )
    with bar:
        task = bar.add_task("backfill", total=library.total_bytes(files))
        result = library.backfill(
            files,
            endpoints,
            on_progress=lambda consumed: bar.advance(task, consumed),
            on_bad_line=report,
            pii_key=pii_key(warn=False),  # only for foreign lines with clear numbers
        )
    if shown > MAX_BAD_LINES_SHOWN:
        errors.print(f"... and {shown - MAX_BAD_LINES_SHOWN} more bad lines")
    skipped = ", ".join(f"{count} {kind}" for kind, count in sorted(result.skipped.items())) or "0 skipped"
    per_source = ", ".join(f"{source} {count}" for source, count in sorted(result.by_source.items()))
    typer.echo(
        f"{result.lines} lines: {result.spans} spans sent ({per_source or 'none'}), "
        f"{len(result.bad)} bad, {skipped}; "
        f"exporter delivered {result.exported}, dropped {result.dropped} "
        f"(to {', '.join(endpoints)})"
    )
    if result.dropped:
        errors.print(
            f"{result.dropped} spans were not delivered; check that {', '.join(endpoints)} is up, "
            "then run backfill again (span ids are kept, so nothing is stored twice)",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_NOT_DELIVERED)
    raise typer.Exit(EXIT_BAD_LINES if result.bad else 0)


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(backfill)
