"""callscope import-otlp: Collector file-exporter JSON lines, bad lines reported, good spans kept."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from typer.testing import CliRunner

from callscope.cli import app
from pipeline.importer import import_files
from pipeline.storage import DataDir
from tests.pipeline.test_ingest_http import SPEC_VECTOR


def _line(span_id: str, **changes: object) -> str:
    document = json.loads(json.dumps(SPEC_VECTOR))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span.update(spanId=span_id, **changes)
    return json.dumps(document)


def test_import_keeps_good_spans_and_reports_bad_lines(tmp_path: Path) -> None:
    source = tmp_path / "traces.jsonl"
    source.write_text(
        "\n".join(
            [
                _line("00000000000000a1"),
                '{"resourceSpans": [',  # line 2: truncated
                "",
                _line("00000000000000a2"),
                _line("abc"),  # line 5: odd-length id, that span rejected
                _line("00000000000000a3", traceId="not hex at all"),  # line 6: not OTLP JSON
            ]
        )
        + "\n"
    )
    packed = tmp_path / "more.jsonl.gz"
    packed.write_bytes(gzip.compress((_line("00000000000000b1") + "\n").encode()))
    data = DataDir(tmp_path / "data")
    result = import_files(data, [source, packed], batch_spans=2)
    assert (result.spans, result.bad_lines, result.rejected_spans) == (3, 2, 1)
    assert [p.line for p in result.problems] == [2, 5, 6]
    assert result.problems[0].message.startswith("body is not valid JSON")
    assert "span_id has 3 hex digits, expected 16" in result.problems[1].message
    assert "traceId must be a hex string" in result.problems[2].message
    with data.connect_readonly() as con:
        ids = con.execute("select span_id from spans order by 1").fetchall()
    assert ids == [("00000000000000a1",), ("00000000000000a2",), ("00000000000000b1",)]


def test_import_command_exit_code_and_line_numbers(tmp_path: Path) -> None:
    source = tmp_path / "traces.jsonl"
    source.write_text(_line("00000000000000c1") + "\nnot json\n")
    result = CliRunner().invoke(app, ["import-otlp", str(source), "--data", str(tmp_path / "d"), "-q"])
    assert result.exit_code == 1
    assert f"{source}:2: body is not valid JSON" in result.output
    assert "imported 1 spans from 2 lines" in result.output
    missing = CliRunner().invoke(app, ["import-otlp", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2
    assert "is not a readable file" in missing.output
