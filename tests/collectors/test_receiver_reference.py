"""`callscope receiver`, the reference receiver: run as a real process over wss (a trustme CA),
fed a MiniVoice stream by a real client; its console and JSON log say what happened."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import trustme
from websockets.asyncio.client import connect

from collectors.reference_receiver import describe
from tests.collectors.test_receiver import CALL_ID, PAYLOAD, connected, media_frames, start, stop
from tests.otlp_sink import OTLPSink

CALLSCOPE = Path(sys.executable).with_name("callscope")


class Output:
    """Reads a process's stderr in a thread, so waiting for a line never blocks on a pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def join(self) -> None:
        self._thread.join(timeout=10)
        self._stream.close()


def test_reference_receiver_over_wss_logs_the_stream_and_exports_the_span(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    authority.configure_trust(client_context)
    json_log = tmp_path / "receiver.jsonl"

    with OTLPSink() as sink:
        process = subprocess.Popen(
            [
                str(CALLSCOPE),
                "receiver",
                "--port",
                "0",
                "--certfile",
                str(tmp_path / "server.pem"),
                "--endpoint",
                sink.endpoint,
                "--json-log",
                str(json_log),
                "--summary-every",
                "0.2",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100"},
        )
        output = Output(process)
        try:
            url = output.wait_for(r"listening on (wss://\S+)").group(1)

            async def platform() -> None:
                async with connect(url + "/media?call_id=" + CALL_ID, ssl=client_context) as client:
                    await client.send(connected())
                    await client.send(start())
                    for frame in media_frames(10):
                        await client.send(frame)
                        await asyncio.sleep(0.02)  # 20 ms of audio per frame pair, roughly
                    await client.send("not json")
                    await client.send(stop(22))

            asyncio.run(platform())
            output.wait_for(r"disconnected code=1000 by=platform")
            spans = sink.wait_for_spans(1, "stream.receiver", timeout=20)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)
            output.join()

    console = "\n".join(output.lines)
    assert process.returncode == 0, console
    assert re.search(r"open +conn=\w+ client=127\.0\.0\.1 path=/media\?call_id=call_123", console)
    assert re.search(r"start +conn=\w+ call_id=call_123 stream_id=str_9f2c tracks=inbound,outbound", console)
    assert "media received: first frame track=inbound chunk=1 timestamp=0ms" in console
    assert re.search(r"media +conn=\w+ media received: \+\d+ frames in 0\.2s", console)
    assert re.search(r"error +conn=\w+ invalid_json: not JSON", console)
    assert re.search(r"stop +conn=\w+ reason=stop_stream", console)
    assert re.search(
        r"disconnected code=1000 by=platform after \d+\.\ds: 20 frames, 3200 bytes, 1 errors", console
    )
    assert "stopped after 1 connection(s)" in console
    assert PAYLOAD not in console

    (span,) = spans
    assert span["call_id"] == CALL_ID
    assert span["attributes"]["minivoice.media.frames"] == 20
    assert span["resource_attributes"]["service.name"] == "callscope-reference-receiver"

    lines = [json.loads(line) for line in json_log.read_text().splitlines()]
    assert [line["event"] for line in lines if line["record"] == "lifecycle"] == [
        "open",
        "connected",
        "start",
        "first_media",
        "error",
        "stop",
        "close",
    ]
    assert [line["name"] for line in lines if line["record"] == "span"] == ["stream.receiver"]


def test_bad_tls_files_are_a_clear_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [str(CALLSCOPE), "receiver", "--port", "0", "--certfile", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot load the TLS certificate/key" in result.stderr
    assert "--certfile" in result.stderr


def test_describe_turns_lifecycle_lines_into_sentences() -> None:
    line = {
        "record": "lifecycle",
        "event": "close",
        "connection_id": "2f23af4c-b37c-4b52",
        "attributes": {
            "minivoice.close.code": 1006,
            "minivoice.closed_by": "network",
            "duration_ms": 12_345.0,
            "minivoice.media.frames": 600,
            "minivoice.media.bytes": 96_000,
            "minivoice.errors": 0,
        },
    }
    assert describe(line) == (
        "close       conn=2f23af4c disconnected code=1006 by=network after 12.3s: "
        "600 frames, 96000 bytes, 0 errors"
    )
    assert describe({"record": "span", "name": "stream.receiver"}) is None
