"""Collector-side commands: validate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def register(app: typer.Typer) -> None:
    app.command()(validate)
