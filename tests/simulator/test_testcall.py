"""`callscope test-call` against the demo customer app, and the demo's busy-port messages."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from typer.testing import CliRunner

from callscope.cli import app as cli
from collectors import call_trace_id
from simulator.demo_app import DemoApp, DemoAppConfig

runner = CliRunner()


@contextmanager
def demo_app_in_thread(**config: Any) -> Iterator[DemoApp]:
    """The demo app on its own event loop in a thread, as a separate service would run."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="demo-app", daemon=True)
    thread.start()
    provider = TracerProvider()  # no exporter: these tests read the CLI output
    app = DemoApp(DemoAppConfig(tracer_provider=provider, **config))
    try:
        asyncio.run_coroutine_threadsafe(app.__aenter__(), loop).result(30)
        yield app
    finally:
        asyncio.run_coroutine_threadsafe(app.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        provider.shutdown()


@pytest.fixture(scope="module")
def demo_app() -> Iterator[DemoApp]:
    with demo_app_in_thread(answer_url_stall_s=0.6, overloaded_after_frames=6) as app:
        yield app


@pytest.fixture(scope="module")
def ca_file(demo_app: DemoApp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_app.tls.write_ca(tmp_path_factory.mktemp("ca") / "demo-ca.pem")


def _test_call(demo_app: DemoApp, ca_file: Path, *extra: str) -> Any:
    args = [
        "test-call",
        "--answer-url",
        demo_app.answer_url,
        "--webhook-url",
        demo_app.webhook_url,
        "--ca",
        str(ca_file),
        "--seconds",
        "0.3",
        *extra,
    ]
    return runner.invoke(cli, args)


def test_happy_test_call_prints_each_step_and_exits_0(demo_app: DemoApp, ca_file: Path) -> None:
    result = _test_call(demo_app, ca_file)
    output = result.output
    assert result.exit_code == 0, output
    assert "answer_url answered HTTP 200" in output
    assert '{"result": "stream action accepted by the call flow"}' in output
    assert "WebSocket connected to wss://127.0.0.1:" in output
    assert "token=REDACTED" in output and demo_app.stream_token not in output
    assert "sent 30 media frames" in output  # 0.3 s, both tracks
    assert "sent stop (call_ended) and closed with 1000" in output
    assert "call.completed delivered, HTTP 200" in output
    assert "verdict: ok" in output
    # The steps come in the MiniVoice debug order.
    order = [
        output.index(s) for s in ("answer_url answered", "accepted by the call flow", "WebSocket connected")
    ]
    assert order == sorted(order)


@pytest.mark.parametrize(
    ("scenario", "verdict", "detail"),
    [
        (
            "receiver_closes_early",
            "stream_dropped",
            "receiver closed the stream with 1011 (transcriber overloaded)",
        ),
        ("handshake_rejected", "stream_not_connected", "HTTP 403"),
        ("invalid_scheme", "invalid_action", "stream_url scheme is https; MiniVoice requires wss"),
        ("answer_url_not_json", "answer_url_failed", "answer_url response is not JSON"),
        ("tls_failure", "stream_not_connected", "TLS handshake failed"),
        ("webhook_lost", "webhook_missing", "call.completed was never sent"),
    ],
)
def test_failing_test_call_names_the_step_and_exits_1(
    demo_app: DemoApp, ca_file: Path, scenario: str, verdict: str, detail: str
) -> None:
    result = _test_call(demo_app, ca_file, "--scenario", scenario)
    assert result.exit_code == 1, result.output
    assert f"verdict: {verdict}" in result.output
    assert detail in result.output
    assert "next step: " in result.output


def test_answer_url_timeout_uses_the_given_timeout(demo_app: DemoApp, ca_file: Path) -> None:
    result = _test_call(demo_app, ca_file, "--scenario", "answer_url_timeout", "--timeout-ms", "200")
    assert result.exit_code == 1, result.output
    assert "answer_url did not answer within 200 ms" in result.output


def test_without_ca_the_private_certificate_is_not_trusted(demo_app: DemoApp) -> None:
    result = runner.invoke(cli, ["test-call", "--answer-url", demo_app.answer_url, "--seconds", "0.1"])
    assert result.exit_code == 1
    assert "verdict: stream_not_connected" in result.output
    assert "No --webhook-url: webhook delivery was not tested." in result.output


def test_bad_options_get_clear_errors() -> None:
    result = runner.invoke(cli, ["test-call", "--answer-url", "ftp://example.com/answer"])
    assert result.exit_code == 2
    assert "is not an http(s) URL" in result.output
    result = runner.invoke(cli, ["test-call", "--answer-url", "http://127.0.0.1:1/", "--scenario", "nope"])
    assert result.exit_code == 2
    assert "unknown scenario 'nope'" in result.output


@pytest.mark.parametrize("option", ["--ingest-port", "--app-port", "--receiver-port", "--dashboard-port"])
def test_busy_port_names_the_port_and_the_option(option: str, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        ports = {"--ingest-port": "0", "--app-port": "0", "--receiver-port": "0", "--dashboard-port": "8501"}
        ports[option] = str(port)
        args = ["demo", "--calls", "1", "--data", str(tmp_path / "data")]
        for name, value in ports.items():
            args += [name, value]
        if option != "--dashboard-port":
            args.append("--no-dashboard")
        result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is already in use; choose another with {option} PORT" in result.output


def test_a_stream_closed_before_start_is_still_the_calls_span() -> None:
    # The demo's answer_url puts the call id in the stream_url's query, so a stream the platform
    # opens and drops before its `start` message (seen in the soak when the receiver restarted)
    # is still recorded against the call, not as a span without a call id.
    import json

    import httpx
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from websockets.sync.client import connect

    exporter = InMemorySpanExporter()
    with demo_app_in_thread() as app:
        provider = app.config.tracer_provider
        assert isinstance(provider, TracerProvider)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        body = {"event": "call.answered", "call": {"id": "call_early_close", "status": "in-progress"}}
        answer = httpx.post(app.answer_url, content=json.dumps(body), timeout=10)
        stream_url = answer.json()["actions"][0]["stream_url"]
        assert stream_url.endswith("&call_id=call_early_close")
        with connect(stream_url, ssl=app.client_context(), open_timeout=10) as websocket:
            websocket.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        deadline = time.monotonic() + 10
        while not [s for s in exporter.get_finished_spans() if s.name == "stream.receiver"]:
            assert time.monotonic() < deadline, "no stream.receiver span"
            time.sleep(0.05)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "stream.receiver"]
    assert span.attributes is not None
    assert span.attributes["minivoice.call_id"] == "call_early_close"
    assert span.attributes["minivoice.call_id_source"] == "query"
    assert span.context.trace_id == call_trace_id("call_early_close")
