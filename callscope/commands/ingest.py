"""Ingest-side commands: ingest (OTLP/HTTP receiver), compact, import-otlp."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

DATA_HELP = "Data directory (default: $CALLSCOPE_DATA or ./callscope-data)."
#: Decode in a second process when there is a second core.
ROLL_PROCESSES = 1 if (os.cpu_count() or 1) > 1 else 0


def _settings(data: Path | None) -> Any:
    from pipeline.settings import Settings, SettingsError

    try:
        return Settings.from_environ().with_overrides(data_dir=data)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc


def ingest(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (OTLP/HTTP's is 4318; 0 picks one).")] = 4318,
    data: Annotated[Path | None, typer.Option("--data", help=DATA_HELP)] = None,
    *,
    fsync: Annotated[
        bool, typer.Option("--fsync/--no-fsync", help="fsync the write-ahead log before answering.")
    ] = True,
    roll_processes: Annotated[
        int,
        typer.Option("--roll-processes", help="Processes decoding the log into Parquet (0: in-process)."),
    ] = ROLL_PROCESSES,
    compact_interval: Annotated[
        float, typer.Option("--compact-interval", help="Seconds between background compactions (0: off).")
    ] = 300.0,
    wal_seconds: Annotated[
        float, typer.Option("--wal-seconds", help="Seconds before a write-ahead-log file is rolled.")
    ] = 2.0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Receive OTLP/HTTP traces (protobuf or JSON) at POST /v1/traces and store them durably.

    A 200 means the spans are in the fsync'd write-ahead log; they are rolled into Parquet
    segments under DATA/spans/ within seconds, and readers query DATA/callscope.duckdb.
    Set CALLSCOPE_INGEST_TOKEN to require 'Authorization: Bearer <token>'.

    Example: callscope ingest --host 127.0.0.1 --port 4318 --data ./callscope-data
    """
    from pipeline.ingest import IngestOptions, RunningIngest, serve

    settings = _settings(data)
    options = IngestOptions.from_settings(
        settings,
        fsync=fsync,
        roll_processes=roll_processes,
        compact_interval_s=compact_interval,
        wal_file_age_s=wal_seconds,
    )

    def ready(running: RunningIngest) -> None:
        typer.echo(f"callscope ingest: {running.traces_url} -> {running.data.path}", err=True)

    fields = {name: getattr(options, name) for name in options.__dataclass_fields__}
    serve(settings.data_dir, host=host, port=port, log_level=log_level, ready=ready, **fields)


def compact(
    data: Annotated[Path | None, typer.Option("--data", help=DATA_HELP)] = None,
    min_files: Annotated[
        int, typer.Option("--min-files", help="Merge partitions with at least this many.")
    ] = 2,
    small_mb: Annotated[int, typer.Option("--small-mb", help="Merge only segments smaller than this.")] = 64,
) -> None:
    """Merge each date partition's small segments into one, dropping duplicate spans.

    Safe while ingest runs and readers query: the swap is atomic, and a crash loses nothing.

    Example: callscope compact --data ./callscope-data
    """
    from pipeline.compaction import CompactionBusyError
    from pipeline.compaction import compact as run_compaction
    from pipeline.storage import DataDir

    settings = _settings(data)
    directory = DataDir(settings.data_dir)
    if not directory.spans_dir.is_dir():
        raise typer.BadParameter(f"{directory.path} has no spans/ directory", param_hint="--data")
    try:
        result = run_compaction(directory, min_files=min_files, small_bytes=small_mb * 1024 * 1024)
    except CompactionBusyError as exc:
        typer.echo(f"callscope compact: {exc}; try again when it has finished", err=True)
        raise typer.Exit(1) from exc
    directory.refresh_views_if_changed()
    for part in result.partitions:
        typer.echo(
            f"date={part.date}: {part.inputs} segments -> {part.merged.name} "
            f"({part.rows_out} spans, {part.duplicates_dropped} duplicates dropped)"
        )
    typer.echo(
        f"compacted {len(result.partitions)} partition(s), {result.files_merged} segments, "
        f"{result.duplicates_dropped} duplicate spans dropped"
    )


def import_otlp(
    files: Annotated[list[Path], typer.Argument(help="OTLP JSON-lines files (.jsonl, or .gz).")],
    data: Annotated[Path | None, typer.Option("--data", help=DATA_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Import OpenTelemetry Collector file-exporter output (one OTLP JSON request per line).

    Bad lines are reported with their line numbers and skipped; every good span is kept.
    Exits 1 if any line was bad.

    Example: callscope import-otlp traces.jsonl --data ./callscope-data
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.importer import import_files
    from pipeline.storage import DataDir

    for path in files:
        if not path.is_file():
            raise typer.BadParameter(f"{path} is not a readable file", param_hint="FILES")
    settings = _settings(data)
    directory = DataDir(settings.data_dir).ensure()
    console = Console(stderr=True)
    total = sum(path.stat().st_size for path in files if path.suffix != ".gz") or None
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    ) as progress:
        task = progress.add_task("importing", total=total)
        result = import_files(
            directory, files, progress=lambda _path, consumed: progress.advance(task, consumed)
        )
    for problem in result.problems:
        console.print(
            f"{problem.path}:{problem.line}: {problem.message}", markup=False, highlight=False, soft_wrap=True
        )
    if result.bad_lines > len(result.problems):
        console.print(f"... and {result.bad_lines - len(result.problems)} more bad lines")
    typer.echo(
        f"imported {result.spans} spans from {result.lines} lines into {directory.path} "
        f"({result.bad_lines} bad lines, {result.rejected_spans} spans rejected)"
    )
    raise typer.Exit(1 if result.bad_lines else 0)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the CLI."""
    app.command()(ingest)
    app.command()(compact)
    app.command("import-otlp")(import_otlp)
