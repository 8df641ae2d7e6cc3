"""`callscope dashboard`: serve the Streamlit triage dashboard over a data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def dashboard(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The data directory (default: $CALLSCOPE_DATA or ./callscope-data)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on.")] = 8501,
    address: Annotated[
        str, typer.Option("--address", help="Interface to bind (0.0.0.0 to share it on the network).")
    ] = "127.0.0.1",
) -> None:
    """Serve the triage dashboard: overview, calls, call detail and SQL, read-only.

    It reads the views in DIR/callscope.duckdb, so it works while ingest and build write.
    Press Ctrl+C to stop it.

    Example: callscope dashboard --data ./callscope-data --port 8501
    """
    import subprocess

    from dashboard.server import DashboardStartError, dashboard_url, launch, wait_until_ready
    from pipeline.settings import Settings, SettingsError

    try:
        settings = Settings.from_environ().with_overrides(data_dir=data)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise typer.BadParameter(f"{settings.data_dir} is not a directory", param_hint="--data")
    url = dashboard_url(port, address)
    process = launch(settings.data_dir, port, address=address, quiet=False)
    try:
        wait_until_ready(process, url, timeout=60)
        typer.echo(f"callscope dashboard on {settings.data_dir}: {url}")
        process.wait()
    except KeyboardInterrupt:
        pass
    except DashboardStartError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    raise typer.Exit(process.returncode if process.returncode and process.returncode > 0 else 0)


def register(app: typer.Typer) -> None:
    """Add `callscope dashboard` to the CLI."""
    app.command()(dashboard)
