"""The `duckdb` shell (the dev extra's duckdb-cli), run as a user would from a terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def shell_query(database: str | Path, sql: str, *, cwd: Path) -> str:
    """Run `duckdb -readonly -csv -noheader DATABASE -c SQL` in `cwd`; its output, stripped.
    Fails the test with the shell's own message when it exits non-zero."""
    shell = Path(sys.executable).parent / "duckdb"
    assert shell.exists(), "the dev extra installs the duckdb shell (duckdb-cli); run `make test`"
    result = subprocess.run(
        [str(shell), "-readonly", "-csv", "-noheader", str(database), "-c", sql],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
