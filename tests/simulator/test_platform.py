"""The simulated platform against a bare Starlette + websockets customer app, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from simulator.platform import Platform, PlatformConfig
from simulator.runner import run_calls
from simulator.scenarios import SCENARIOS
from simulator.serving import closed_port
from simulator.stream import StreamOptions
from simulator.webhooks import WebhookOptions
from tests.simulator.bare_app import BareApp

FAST = {"media_seconds": 0.2, "speed": math.inf, "ring_seconds": 0.0, "hangup_s": 0.0}


def _config(app: BareApp, **overrides: Any) -> PlatformConfig:
    options: dict[str, Any] = {
        "answer_url": app.answer_url,
        "webhook_url": app.webhook_url,
        "answer_url_timeout_s": 2.0,
        "ssl_context": app.client_context(),
        "stream": StreamOptions(ssl_context=app.client_context(), open_timeout_s=3.0),
        "webhooks": WebhookOptions(retries=3, backoff_s=0.01),
        **FAST,
    }
    options.update(overrides)
    return PlatformConfig(**options)


def _start_stream(url: Callable[[], str], track: str) -> Callable[[str], dict[str, Any]]:
    return lambda _scenario: {"actions": [{"type": "start_stream", "stream_url": url(), "track": track}]}


def _run(app: BareApp, body: Callable[[BareApp], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with app:
            return await body(app)

    return asyncio.run(main())


def _call(app: BareApp, scenario: str, **overrides: Any) -> Any:
    async def body(app: BareApp) -> Any:
        async with Platform(_config(app, **overrides)) as platform:
            return await platform.place_call(scenario, "call_test_1")

    return _run(app, body)


def test_happy_call_speaks_the_minivoice_protocol() -> None:
    app = BareApp()
    outcome = _call(app, "happy")

    headers, body = app.answer_requests[0]
    assert body["event"] == "call.answered"
    assert body["call"]["id"] == "call_test_1"
    assert body["created_at"].endswith("Z")
    assert headers["x-minivoice-call-id"] == "call_test_1"
    assert headers["x-callscope-scenario"] == "happy"

    [stream] = app.streams
    assert stream.events[0] == "connected" and stream.events[1] == "start"
    assert stream.events[-1] == "stop"
    start = stream.messages[1]["start"]
    assert start["call_id"] == "call_test_1"
    assert start["tracks"] == ["inbound", "outbound"]
    assert start["media_format"] == {"encoding": "audio/x-mulaw", "sample_rate": 8000, "channels": 1}
    assert stream.events.count("media") == 20  # 0.2 s x 50 frames/s x 2 tracks
    assert stream.messages[-1]["stop"] == {"call_id": "call_test_1", "reason": "call_ended"}
    assert stream.close_code == 1000

    assert [w["event"] for w in app.webhooks] == ["call.initiated", "call.answered", "call.completed"]
    assert app.webhooks[-1]["call"]["status"] == "completed"

    assert outcome.action_result == {"result": "stream action accepted by the call flow"}
    assert outcome.connected and outcome.stop_sent
    assert (outcome.close_code, outcome.closed_by) == (1000, "platform")
    assert outcome.media_frames_sent == 20
    assert outcome.completed_delivered
    assert [s.stage for s in outcome.steps if not s.ok] == []


def test_media_frames_are_20ms_mulaw_with_per_track_chunks() -> None:
    app = BareApp()
    captured: list[dict[str, Any]] = []

    async def receive_all(ws: Any) -> None:
        async for raw in ws:
            captured.append(json.loads(raw))

    app._receive = receive_all  # type: ignore[method-assign]
    _call(app, "happy", media_seconds=0.1)
    media = [m for m in captured if m["event"] == "media"]
    inbound = [m["media"] for m in media if m["media"]["track"] == "inbound"]
    assert [m["chunk"] for m in inbound] == [1, 2, 3, 4, 5]
    assert [m["timestamp"] for m in inbound] == [0, 20, 40, 60, 80]
    assert all(len(base64.b64decode(m["payload"])) == 160 for m in inbound)
    sequence = [m["sequence_number"] for m in captured if "sequence_number" in m]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)


def test_real_time_pacing_takes_the_audio_duration() -> None:
    app = BareApp()
    started = time.monotonic()
    outcome = _call(app, "happy", media_seconds=0.3, speed=1.0)
    # A lower bound only: pacing must never run faster than real time.
    assert time.monotonic() - started >= 0.28
    assert outcome.media_frames_sent == 30


def test_webhooks_are_retried_with_backoff_until_acknowledged() -> None:
    app = BareApp(webhook_failures=2)
    outcome = _call(app, "happy")
    assert {w["event"] for w in app.webhooks} == {"call.initiated", "call.answered", "call.completed"}
    assert sum(w.attempts for w in outcome.webhooks) == 5
    assert all(w.delivered == 1 for w in outcome.webhooks)


def test_webhook_endpoint_that_never_acks_is_reported() -> None:
    app = BareApp(webhook_failures=1000)
    outcome = _call(app, "happy")
    assert not outcome.completed_delivered
    completed = next(w for w in outcome.webhooks if w.event == "call.completed")
    assert completed.attempts == 4 and completed.last_error == "HTTP 503"
    assert any("call.completed not acknowledged after 4 attempts" in s.message for s in outcome.steps)


def test_duplicate_webhooks() -> None:
    app = BareApp()
    _call(app, "duplicate_webhooks")
    events = [w["event"] for w in app.webhooks]
    assert events.count("call.initiated") == 2
    assert events.count("call.answered") == 2
    assert events.count("call.completed") == 3


def test_out_of_order_webhooks_deliver_completed_first() -> None:
    app = BareApp()
    outcome = _call(app, "out_of_order_webhooks")
    assert [w["event"] for w in app.webhooks] == ["call.completed", "call.answered", "call.initiated"]
    # created_at stays the true event time: only the delivery order changes.
    created = {w["event"]: w["created_at"] for w in app.webhooks}
    assert created["call.initiated"] <= created["call.answered"] <= created["call.completed"]
    assert outcome.completed_delivered


def test_webhook_lost_never_delivers_completed() -> None:
    app = BareApp()
    outcome = _call(app, "webhook_lost")
    assert [w["event"] for w in app.webhooks] == ["call.initiated", "call.answered"]
    assert not outcome.completed_delivered
    assert next(w for w in outcome.webhooks if w.event == "call.completed").withheld


@pytest.mark.parametrize(("scenario", "status"), [("busy", "busy"), ("no_answer", "no-answer")])
def test_unanswered_calls_never_reach_the_answer_url(scenario: str, status: str) -> None:
    app = BareApp()
    outcome = _call(app, scenario)
    assert app.answer_requests == []
    assert app.streams == []
    assert [w["event"] for w in app.webhooks] == ["call.initiated", "call.completed"]
    assert app.webhooks[-1]["call"]["status"] == status
    assert outcome.final_status == status


def test_network_drop_ends_the_stream_without_a_close_frame() -> None:
    app = BareApp()
    outcome = _call(app, "network_drop")
    [stream] = app.streams
    assert stream.close_code == 1006 and not stream.close_rcvd
    assert "stop" not in stream.events
    assert 0 < stream.events.count("media") < 20
    assert (outcome.close_code, outcome.closed_by) == (1006, "network")
    assert outcome.completed_delivered  # the call goes on: call.completed still arrives


def test_receiver_closing_early_is_seen_as_its_close() -> None:
    app = BareApp(actions=_start_stream(lambda: app.stream_url("/close-early"), "both"))
    outcome = _call(app, "receiver_closes_early", media_seconds=2.0, speed=20.0)
    assert (outcome.close_code, outcome.closed_by) == (1011, "receiver")
    assert outcome.close_reason == "receiver overloaded"
    assert not outcome.stop_sent
    assert outcome.media_frames_sent < 200
    assert outcome.completed_delivered


def test_handshake_rejected_reports_the_status() -> None:
    app = BareApp(actions=_start_stream(lambda: app.stream_url("/reject"), "inbound"))
    outcome = _call(app, "handshake_rejected")
    assert not outcome.connected
    assert "HTTP 403" in (outcome.connect_error or "")
    assert app.streams == []
    assert outcome.completed_delivered


def test_untrusted_certificate_is_a_tls_failure() -> None:
    app = BareApp()
    untrusted = ssl.create_default_context()  # the system store does not know the app's private CA
    outcome = _call(app, "tls_failure", stream=StreamOptions(ssl_context=untrusted, open_timeout_s=3.0))
    assert not outcome.connected
    assert "TLS handshake failed" in (outcome.connect_error or "")
    assert app.streams == []


def test_receiver_down_is_connection_refused() -> None:
    port = closed_port()
    app = BareApp(actions=_start_stream(lambda: f"wss://127.0.0.1:{port}/x", "both"))
    outcome = _call(app, "receiver_down")
    assert not outcome.connected
    assert f"connection refused at 127.0.0.1:{port}" in (outcome.connect_error or "")


def test_answer_url_http_error() -> None:
    app = BareApp(answer_status=500)
    outcome = _call(app, "answer_url_500")
    assert outcome.answer_url_status == 500
    assert outcome.answer_url_error == "answer_url answered HTTP 500"
    assert app.streams == []
    assert outcome.completed_delivered


def test_answer_url_timeout() -> None:
    app = BareApp(answer_delay_s=0.5)
    outcome = _call(app, "answer_url_timeout", answer_url_timeout_s=0.1)
    assert outcome.answer_url_status is None
    assert outcome.answer_url_error == "answer_url did not answer within 100 ms"
    assert app.streams == []


def test_answer_url_not_json() -> None:
    app = BareApp(answer_html="<html><body>Welcome!</body></html>")
    outcome = _call(app, "answer_url_not_json")
    assert outcome.answer_url_status == 200
    assert outcome.answer_url_error == "answer_url response is not JSON"
    assert outcome.answer_url_body == "<html><body>Welcome!</body></html>"
    assert app.streams == []


def test_answer_url_unreachable() -> None:
    app = BareApp()
    outcome = _call(app, "happy", answer_url=f"http://127.0.0.1:{closed_port()}/answer")
    assert (outcome.answer_url_error or "").startswith("answer_url request failed")
    assert outcome.completed_delivered


def test_invalid_action_is_rejected_and_not_executed() -> None:
    app = BareApp(actions=_start_stream(lambda: "https://media.example.com/minivoice", "speaker"))
    outcome = _call(app, "invalid_track")
    assert outcome.action_valid is False
    assert outcome.action_problems == ["stream_url_not_wss", "invalid_track"]
    assert outcome.action_result is not None and outcome.action_result["result"] == "actions rejected"
    assert app.streams == []
    assert outcome.completed_delivered


def test_no_start_stream_means_no_stream() -> None:
    app = BareApp(
        actions=lambda _s: {
            "actions": [{"type": "stop_stream", "stream_url": app.stream_url(), "track": "both"}]
        }
    )
    outcome = _call(app, "no_stream_requested")
    assert outcome.action_valid is True and not outcome.stream_requested
    assert app.streams == []


def test_no_media_sends_start_and_stop_only() -> None:
    app = BareApp()
    outcome = _call(app, "no_media")
    [stream] = app.streams
    assert stream.events == ["connected", "start", "stop"]
    assert stream.close_code == 1000
    assert outcome.media_frames_sent == 0


def test_runner_bounds_concurrency_and_keeps_order() -> None:
    app = BareApp(answer_delay_s=0.05)
    in_flight = 0
    peak = 0
    original = app._answer

    async def counting(request: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(request)
        finally:
            in_flight -= 1

    app._answer = counting  # type: ignore[method-assign]

    async def body(app: BareApp) -> Any:
        async with Platform(_config(app)) as platform:
            scenarios = [SCENARIOS["happy"], SCENARIOS["busy"]] * 6
            return await run_calls(platform, scenarios, concurrency=3, call_ids=[f"c{i}" for i in range(12)])

    outcomes = _run(app, body)
    assert [o.call_id for o in outcomes] == [f"c{i}" for i in range(12)]
    assert [o.scenario for o in outcomes] == ["happy", "busy"] * 6
    assert 1 <= peak <= 3
    assert len(app.streams) == 6
