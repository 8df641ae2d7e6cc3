"""Backfill: collector log lines back into spans, with original times and ids, through real OTLP."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from typer.testing import CliRunner

from callscope.cli import app
from collectors import logs
from collectors.answer_url import AnswerUrlMiddleware
from collectors.backfill import LineError, parse_line
from collectors.identity import call_root_span_id_hex, call_trace_id_hex
from collectors.webhooks import WebhookCollector
from tests.otlp_sink import OTLPSink, UvicornThread, closed_port_endpoint

runner = CliRunner()

ANSWER = {"event": "call.answered", "call": {"id": "call_bf", "from": "+15551230001", "to": "+15551230002"}}
COMPLETED = {
    "event": "call.completed",
    "created_at": "2026-05-29T12:10:00Z",
    "call": {"id": "call_bf", "status": "completed"},
}


async def _failure_case(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    body = json.dumps(
        {"actions": [{"type": "start_stream", "stream_url": "https://x.example/s", "track": "speaker"}]}
    )
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body.encode()})


def _stream_one_call(provider: TracerProvider) -> None:
    """A real `websockets` receiver, instrumented by collectors.receiver, fed a short MiniVoice stream."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from collectors.receiver import instrument_receiver

    async def handler(connection: Any) -> None:
        async for _message in connection:
            pass

    start = {
        "call_id": "call_bf",
        "stream_id": "str_1",
        "tracks": ["inbound"],
        "media_format": {"encoding": "audio/x-mulaw", "sample_rate": 8000, "channels": 1},
    }
    messages = [
        {"event": "connected", "protocol": "minivoice.stream", "version": "1"},
        {"event": "start", "sequence_number": 1, "start": start},
        *(
            {
                "event": "media",
                "sequence_number": 2 + i,
                "media": {"track": "inbound", "chunk": 1 + i, "timestamp": 20 * i, "payload": "AAAA"},
            }
            for i in range(3)
        ),
        {"event": "stop", "sequence_number": 5, "stop": {"call_id": "call_bf", "reason": "stop_stream"}},
    ]

    async def scenario() -> None:
        async with serve(instrument_receiver(handler, tracer_provider=provider), "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/media") as client:
                for message in messages:
                    await client.send(json.dumps(message))

    asyncio.run(scenario())


@pytest.fixture
def written_logs(
    tmp_path: Path, memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> dict[str, Any]:
    """Real collectors writing real log files; returns the paths and the original spans."""
    collector = WebhookCollector(tracer_provider=memory_provider, pii_key=b"k")
    with logs.write_logs_to(tmp_path / "logs") as files:
        answer = AnswerUrlMiddleware(_failure_case, tracer_provider=memory_provider, pii_key=b"k")
        with UvicornThread(answer) as a, UvicornThread(collector) as w, httpx.Client() as client:
            client.post(f"{a.url}/answer", json=ANSWER)
            client.post(w.url, json=COMPLETED)
        _stream_one_call(memory_provider)
        paths = {source: files.path(source) for source in ("answer_url", "receiver", "webhook")}
    originals = {span.name: span for span in memory_exporter.get_finished_spans()}
    return {"paths": paths, "originals": originals}


def test_round_trip_keeps_times_ids_events_and_status(
    written_logs: dict[str, Any], otlp_sink: OTLPSink
) -> None:
    paths = written_logs["paths"]
    result = runner.invoke(
        app,
        [
            "backfill",
            "--answer-url",
            str(paths["answer_url"]),
            "--receiver",
            str(paths["receiver"]),
            "--webhooks",
            str(paths["webhook"]),
            "--endpoint",
            otlp_sink.endpoint,
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    # the receiver log also holds lifecycle lines (open, connected, start, ...): skipped, not bad
    assert "spans sent (answer_url 1, receiver 1, webhook 1), 0 bad" in result.stdout
    assert " lifecycle;" in result.stdout
    rows = {row["name"]: row for row in otlp_sink.wait_for_spans(3)}
    assert set(rows) == {"answer_url", "webhook", "stream.receiver"}
    for name, original in written_logs["originals"].items():
        row = rows[name]
        assert row["trace_id"] == call_trace_id_hex("call_bf")
        assert row["parent_span_id"] == call_root_span_id_hex("call_bf")
        assert row["span_id"] == format(original.context.span_id, "016x")  # original id kept
        assert (row["start_ns"], row["end_ns"]) == (original.start_time, original.end_time)
        assert row["status_code"] == original.status.status_code.name
        assert row["kind"] == "SERVER"
        assert row["service_name"] == "callscope-test"
        assert row["resource_attributes"]["host.name"] == "test-host"
        attributes = dict(row["attributes"])
        assert attributes.pop("callscope.backfilled") is True
        expected = {k: list(v) if isinstance(v, tuple) else v for k, v in original.attributes.items()}
        assert attributes == expected
        assert [(e["name"], e["time_ns"]) for e in row["events"]] == [
            (e.name, e.timestamp) for e in original.events
        ]
    assert rows["answer_url"]["attributes"]["minivoice.action.problems"] == [
        "stream_url_not_wss",
        "invalid_track",
    ]
    receiver = rows["stream.receiver"]
    assert receiver["status_code"] == "OK"
    assert receiver["attributes"]["minivoice.media.frames"] == 3
    assert [e["name"] for e in receiver["events"]][:3] == ["connected", "start", "first_media"]
    assert receiver["events"][1]["attributes"]["minivoice.stream.tracks"] == ["inbound"]
    assert "5551230001" not in json.dumps(rows, default=str)


def test_bad_lines_are_reported_and_skipped(
    tmp_path: Path, written_logs: dict[str, Any], otlp_sink: OTLPSink
) -> None:
    good = written_logs["paths"]["webhook"].read_text().strip()
    mixed = tmp_path / "webhooks.jsonl"
    record = json.loads(good)
    mixed.write_text(
        "\n".join(
            [
                good,
                "{truncated",
                "",
                json.dumps({**record, "end_ns": record["start_ns"] - 1}),
                json.dumps({**record, "attributes": {"x": {"nested": True}}}),
                "INFO:callscope.webhooks:" + json.dumps({**record, "span_id": "00000000000000aa"}),
                json.dumps({k: v for k, v in record.items() if k != "name"}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["backfill", "--webhooks", str(mixed), "--endpoint", otlp_sink.endpoint])
    assert result.exit_code == 1, result.output
    assert f"{mixed}:2: not valid JSON" in result.stderr
    assert f'{mixed}:4: "end_ns"' in result.stderr
    assert f"{mixed}:5: attribute 'x' is a dict" in result.stderr
    assert f'{mixed}:7: "name" (the span name) is missing' in result.stderr
    assert ":1:" not in result.stderr and ":6:" not in result.stderr
    assert "7 lines: 2 spans sent (webhook 2), 4 bad, 1 blank;" in result.stdout
    rows = otlp_sink.wait_for_spans(2)
    assert sorted(row["span_id"] for row in rows)[0] == "00000000000000aa"


def test_endpoint_down_exits_3(
    written_logs: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")
    with caplog.at_level(logging.CRITICAL):
        result = runner.invoke(
            app,
            [
                "backfill",
                "--webhooks",
                str(written_logs["paths"]["webhook"]),
                "--endpoint",
                closed_port_endpoint(),
            ],
        )
    assert result.exit_code == 3, result.output
    assert "dropped 1" in result.stdout
    assert "were not delivered" in result.stderr


def test_usage_errors(tmp_path: Path) -> None:
    assert runner.invoke(app, ["backfill"]).exit_code == 2
    missing = runner.invoke(app, ["backfill", "--receiver", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2
    assert "nope.jsonl is not a readable file" in missing.output
    (tmp_path / "r.jsonl").write_text("")
    bad_endpoint = runner.invoke(
        app, ["backfill", "--receiver", str(tmp_path / "r.jsonl"), "--endpoint", "localhost"]
    )
    assert bad_endpoint.exit_code == 2


def test_parse_line_details() -> None:
    line = json.dumps(
        {
            "name": "webhook",
            "start_ns": 5,
            "end_ns": 9,
            "kind": "SERVER",
            "attributes": {"minivoice.from": "+15551230001", "minivoice.call_id": "c1"},
        }
    )
    record = parse_line(line, "webhook", pii_key=None)
    assert record.call_id == "c1"
    assert record.source == "webhook"
    assert record.kind is SpanKind.SERVER
    assert record.attributes == {"minivoice.from.masked": "+1555***0001", "minivoice.call_id": "c1"}
    with pytest.raises(LineError, match="format version 2"):
        parse_line(json.dumps({"v": 2, "name": "x", "start_ns": 1, "end_ns": 1}), "webhook")
    with pytest.raises(LineError, match='"kind" is'):
        parse_line(json.dumps({"name": "x", "start_ns": 1, "end_ns": 1, "kind": "SIDEWAYS"}), "webhook")
    with pytest.raises(LineError, match="no JSON object"):
        parse_line("just text", "webhook")
