"""`callscope export-trace`: one call's whole trace as a file for Jaeger UI's "Upload JSON"."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer


def export_trace(
    call_id: Annotated[str, typer.Argument(help="The MiniVoice call id.")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The data directory (default: $CALLSCOPE_DATA or ./callscope-data)."),
    ] = None,
    trace_format: Annotated[
        Literal["otlp-json", "jaeger-json"],
        typer.Option(
            "--format",
            help="otlp-json: OTLP/JSON {resourceSpans}; jaeger-json: Jaeger query API JSON {data: [...]}.",
        ),
    ] = "otlp-json",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write a call's whole trace, root `minivoice.call` span included, for Jaeger UI's Upload JSON.

    Useful when Jaeger no longer holds the call (its storage is bounded) or was never deployed:
    the file opens in any Jaeger UI (Search > Upload JSON), one complete tree per call.

    Example: callscope export-trace call_123 --format jaeger-json -o call_123.json
    """
    from pipeline.jaeger import trace_document
    from pipeline.settings import Settings, SettingsError
    from pipeline.traces import TraceNotFound

    try:
        settings = Settings.from_environ().with_overrides(data_dir=data)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not settings.data_dir.is_dir():
        raise typer.BadParameter(
            f"{settings.data_dir} is not a data directory (start `callscope ingest --data DIR` first)",
            param_hint="--data",
        )
    try:
        document = trace_document(settings.data_dir, call_id, trace_format)
    except TraceNotFound:
        typer.echo(
            f"error: nothing is stored about call {call_id!r} in {settings.data_dir}. "
            'Check the call id (`callscope sql "select call_id from calls"`) and the --data directory.',
            err=True,
        )
        raise typer.Exit(1) from None
    text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise typer.BadParameter(f"cannot write {output}: {exc.strerror}", param_hint="-o") from exc
    spans = (
        sum(len(t["spans"]) for t in document["data"])
        if "data" in document
        else sum(len(s["spans"]) for r in document["resourceSpans"] for s in r["scopeSpans"])
    )
    typer.echo(f"wrote {spans} spans of call {call_id} to {output} ({trace_format})", err=True)


def register(app: typer.Typer) -> None:
    """Add `callscope export-trace` to the CLI."""
    app.command("export-trace")(export_trace)
