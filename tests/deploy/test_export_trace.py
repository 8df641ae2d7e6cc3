"""`callscope export-trace` on spans that the real OTLP exporter sent to a live `callscope ingest`.

The OTLP/JSON file is also posted, as is, to a second ingest: an OTLP/JSON receiver accepts it
whole, and stores the same spans the first one stored, which is what Jaeger UI's upload needs
too (it reads OTLP/JSON with the same protobuf JSON mapping).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from typer.testing import CliRunner

from callscope.cli import app
from collectors.identity import call_root_span_id_hex
from pipeline.ingest import running_ingest
from pipeline.storage import DataDir
from pipeline.traces import ROOT_SPAN_NAME
from tests.deploy.tracefiles import (
    SERVICES,
    assert_complete_jaeger_tree,
    assert_complete_otlp_tree,
    make_call_spans,
    sdk_provider,
    tags,
)

CALL_IDS = ("call_export_1", "call_export_2")
runner = CliRunner()

# Columns that say when or how a copy was stored, not what the span is.
_STORAGE_COLUMNS = ("ingested_at_ns", "date")


def stored_spans(data_dir: Path) -> list[dict[str, Any]]:
    """Every stored span row, without the storage-only columns, in a stable order."""
    con = DataDir(data_dir).connect_readonly()
    try:
        cursor = con.execute("SELECT * FROM spans ORDER BY trace_id, span_id")
        names = [d[0] for d in cursor.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
    for row in rows:
        for column in _STORAGE_COLUMNS:
            row.pop(column, None)
    return rows


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory holding two calls' spans, exported by the SDK's OTLP/HTTP exporter to ingest."""
    data_dir = tmp_path_factory.mktemp("export")
    with running_ingest(data_dir, fsync=False, wal_file_age_s=0.2) as ingest:
        processors = [
            BatchSpanProcessor(OTLPSpanExporter(endpoint=ingest.traces_url, timeout=10)) for _ in SERVICES
        ]
        providers = {
            name: sdk_provider(name, processor) for name, processor in zip(SERVICES, processors, strict=True)
        }
        for call_id in CALL_IDS:
            make_call_spans(providers, call_id)
        for provider in providers.values():
            assert provider.force_flush(10_000)
            provider.shutdown()
    yield data_dir


def export(data_dir: Path, call_id: str, *args: str) -> Any:
    result = runner.invoke(app, ["export-trace", call_id, "--data", str(data_dir), *args])
    assert result.exit_code == 0, result.output
    return result


def test_otlp_json_export_is_the_calls_complete_tree(ingested: Path, tmp_path: Path) -> None:
    out = tmp_path / "call.json"
    result = export(ingested, CALL_IDS[0], "-o", str(out))
    assert f"to {out}" in result.stderr
    document = json.loads(out.read_text())
    spans = assert_complete_otlp_tree(document, CALL_IDS[0])
    stored = [row for row in stored_spans(ingested) if row["call_id"] == CALL_IDS[0]]
    # "render actions" has no call id attribute: it belongs to the call by trace id.
    trace_ids = {row["trace_id"] for row in stored}
    stored_ids = {row["span_id"] for row in stored_spans(ingested) if row["trace_id"] in trace_ids}
    assert {span["spanId"] for span in spans} == stored_ids | {call_root_span_id_hex(CALL_IDS[0])}
    assert len(spans) == 6  # answer_url, its child, stream.receiver, two webhooks, the root


def test_jaeger_json_export_on_stdout(ingested: Path) -> None:
    result = export(ingested, CALL_IDS[1], "--format", "jaeger-json")
    document = json.loads(result.stdout)
    entry = assert_complete_jaeger_tree(document, CALL_IDS[1])
    names = sorted(span["operationName"] for span in entry["spans"])
    assert names == sorted(
        ["answer_url", "render actions", "stream.receiver", "webhook", "webhook", ROOT_SPAN_NAME]
    )
    (root,) = [s for s in entry["spans"] if s["operationName"] == ROOT_SPAN_NAME]
    assert tags(root)["minivoice.call_id"] == ("string", CALL_IDS[1])


def test_the_otlp_json_file_is_accepted_whole_by_an_otlp_json_receiver(
    ingested: Path, tmp_path: Path
) -> None:
    document = json.loads(export(ingested, CALL_IDS[0]).stdout)
    second = tmp_path / "second"
    with running_ingest(second, fsync=False, wal_file_age_s=0.2) as ingest, httpx.Client() as client:
        response = client.post(
            ingest.traces_url, content=json.dumps(document), headers={"content-type": "application/json"}
        )
    assert response.status_code == 200, response.text
    assert "partialSuccess" not in response.json() or not response.json()["partialSuccess"].get(
        "rejectedSpans"
    )
    reloaded = {row["span_id"]: row for row in stored_spans(second)}
    original = {row["span_id"]: row for row in stored_spans(ingested)}
    assert set(reloaded) - set(original) == {call_root_span_id_hex(CALL_IDS[0])}
    for span_id, row in reloaded.items():
        if span_id in original:
            assert row == original[span_id], f"span {row['name']} changed on the way through the file"


def test_an_unknown_call_is_a_clear_error(ingested: Path) -> None:
    result = runner.invoke(app, ["export-trace", "call_nobody", "--data", str(ingested)])
    assert result.exit_code == 1
    assert "nothing is stored about call 'call_nobody'" in result.stderr


def test_a_missing_data_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export-trace", CALL_IDS[0], "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "is not a data directory" in result.output


def test_an_unknown_format_is_refused(ingested: Path) -> None:
    result = runner.invoke(app, ["export-trace", CALL_IDS[0], "--data", str(ingested), "--format", "zipkin"])
    assert result.exit_code == 2
    assert "otlp-json" in result.output
