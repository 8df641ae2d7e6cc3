"""The `callscope` command line. Thin: each command calls one library function.

Commands live in `callscope/commands/`, one module per area, each with a `register(app)`.
Heavy imports (DuckDB, Polars, Streamlit) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import typer

from callscope import __version__
from callscope.commands import collect, dashboard, demo, ingest, receiver, timeline, traces

app = typer.Typer(
    name="callscope",
    help=(
        "Triage failed MiniVoice real-time audio streams: one timeline per call, "
        "and the step where it failed.\n\n"
        "Example: callscope demo --calls 200"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for module in (collect, receiver, ingest, timeline, demo, dashboard, traces):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"callscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Triage failed MiniVoice real-time audio streams."""


def main() -> None:
    """Console-script entry point."""
    app()
