"""The CLI surface: every command documents itself with an example."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from callscope.cli import app

runner = CliRunner()


def _command_names() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_root_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in _command_names():
        assert name in result.output


@pytest.mark.parametrize("name", _command_names())
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"`callscope {name} --help` has no example"
    assert "callscope " + name in result.output
