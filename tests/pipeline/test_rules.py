"""One test per verdict and per trap of issue 4, from real SDK spans through ingest's decoder.

The pure core (`pipeline.verdicts.evaluate`): span rows in, calls and call_events out.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from pipeline import rules
from pipeline.rules import RulesConfig
from pipeline.verdicts import evaluate, next_step_for
from tests.pipeline.timeline_spans import BAD_ACTIONS, GOOD_ACTIONS, MS, T0, S, SpanFactory

LATER = T0 + 3600 * S  # long after every call here: completed calls settled, silent ones expired


def calls_of(
    table: pa.Table, as_of: int = LATER, config: RulesConfig | None = None
) -> dict[str, dict[str, Any]]:
    result = evaluate(table, as_of, config)
    return {row["call_id"]: row for row in result.calls.to_pylist()}


def judge(spans: SpanFactory, call_id: str = "call_123", as_of: int = LATER, **config: int) -> dict[str, Any]:
    return calls_of(spans.rows(), as_of, RulesConfig(**config) if config else None)[call_id]


# ---- ok and its trap -------------------------------------------------------------------------


def test_stop_then_close_1000_then_completed_is_ok(spans: SpanFactory) -> None:
    spans.ok_call("call_123")
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"], call["is_final"]) == ("ok", "none", True)
    assert call["stop_reason"] == "call_ended"
    assert call["close_code"] == 1000 and call["closed_by"] == "platform"
    assert call["media_frames"] == 885
    assert call["call_status"] == "completed"
    assert call["receiver_clock_skew_ms"] == 0
    assert call["trace_id"] == "cf5287d0ab1438a15543223e69e6f962"  # docs/spans.md test vector
    assert "stop (call_ended) and close 1000" in call["reason"]
    assert call["stream_url"] == "wss://media.example.com/minivoice" and call["track"] == "both"


# ---- failures, in debug order ------------------------------------------------------------------


def test_answer_url_5xx_is_answer_url_failed(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S, final_status="failed")
    spans.answer_url("call_123", T0 + 2 * S, body="Internal Server Error", status=500, latency_ms=12)
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"]) == ("answer_url_failed", "answer_url")
    assert call["reason"].startswith("answer_url answered HTTP 500 in 12 ms")
    assert call["answer_url_status"] == 500
    assert "Fix the error in the answer_url app" in call["next_step"]


def test_answer_url_not_json_is_answer_url_failed(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S)
    spans.answer_url("call_123", T0 + 2 * S, body="<html>ok</html>")
    call = judge(spans)
    assert call["verdict"] == "answer_url_failed"
    assert "with a body that is not JSON: <html>ok</html>" in call["reason"]


def test_answer_url_slower_than_the_timeout_fails_even_with_a_good_200(spans: SpanFactory) -> None:
    spans.ok_call("call_123")
    spans.clear()
    spans.lifecycle("call_123", T0, T0 + 20 * S)
    spans.answer_url("call_123", T0 + 2 * S, latency_ms=6500)
    spans.receiver("call_123", T0 + 9 * S, T0 + 20 * S)
    call = judge(spans)
    assert call["verdict"] == "answer_url_failed"
    assert "answered after 6500 ms; MiniVoice waits at most 5000 ms" in call["reason"]
    # The timeout is configuration (CALLSCOPE_ANSWER_URL_TIMEOUT_MS).
    assert judge(spans, answer_url_timeout_ms=8000)["verdict"] == "ok"


def test_an_answered_call_without_any_answer_url_request_is_answer_url_failed(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S)
    call = judge(spans)
    assert call["verdict"] == "answer_url_failed"
    assert call["reason"].startswith("no answer_url request was recorded for this answered call")


def test_a_retried_answer_url_that_finally_worked_is_not_a_failure(spans: SpanFactory) -> None:
    spans.ok_call("call_123")
    spans.answer_url("call_123", T0 + 1 * S, body="oops", status=503, latency_ms=5)
    call = judge(spans)
    assert call["verdict"] == "ok"
    assert call["answer_url_requests"] == 2


def test_https_and_speaker_is_invalid_action_with_the_docs_reason(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S)
    spans.answer_url("call_123", T0 + 2 * S, body=BAD_ACTIONS)
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"]) == ("invalid_action", "action")
    assert call["reason"].startswith("stream_url scheme is https; MiniVoice requires wss")
    assert 'track is "speaker"' in call["reason"]
    assert call["action_valid"] is False
    assert call["action_problems"] == ["stream_url_not_wss", "invalid_track"]
    assert "callscope validate" in call["next_step"]


def test_valid_start_stream_but_no_connection_is_stream_not_connected(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"]) == ("stream_not_connected", "connect")
    assert "wss://media.example.com/minivoice" in call["reason"]
    assert "receiver recorded no connection" in call["reason"]


def test_connected_without_media_is_no_media(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    spans.receiver("call_123", T0 + 3 * S, T0 + 10 * S, frames=0)
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"]) == ("no_media", "media")
    assert "no media arrived in 7.0 s" in call["reason"]
    assert call["media_frames"] == 0


def test_receiver_closing_mid_call_is_stream_dropped_even_though_completed_arrives(
    spans: SpanFactory,
) -> None:
    spans.lifecycle("call_123", T0, T0 + 30 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    # The receiver crashes 14.2 s before the call ends; MiniVoice never sent stop.
    spans.receiver(
        "call_123",
        T0 + 3 * S,
        T0 + 30 * S - 14_200 * MS,
        stop_reason=None,
        close_code=1011,
        closed_by="receiver",
        close_reason="transcriber crashed",
    )
    call = judge(spans)
    assert call["call_status"] == "completed"
    assert (call["verdict"], call["failure_stage"]) == ("stream_dropped", "stream")
    assert call["reason"] == (
        "receiver closed with 1011 (internal error: transcriber crashed) "
        "14.2 s before call.completed, without a stop"
    )
    assert call["close_code"] == 1011 and call["closed_by"] == "receiver"
    assert call["stream_ended_before_call_ms"] == pytest.approx(14_200, abs=1)
    assert "receiver ended the stream while the call went on" in call["next_step"]


def test_a_network_drop_without_close_frame_is_stream_dropped(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 30 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    spans.receiver(
        "call_123", T0 + 3 * S, T0 + 20 * S, stop_reason=None, close_code=1006, closed_by="network"
    )
    call = judge(spans)
    assert call["verdict"] == "stream_dropped"
    assert call["reason"].startswith("the connection dropped without a close frame (1006, network)")


def test_receiver_errors_are_receiver_error(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 30 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    spans.receiver("call_123", T0 + 3 * S, T0 + 30 * S, errors=[("invalid_json", "frame 17 is not JSON")])
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"]) == ("receiver_error", "stream")
    assert call["reason"] == "receiver recorded 1 error(s); first: invalid_json: frame 17 is not JSON"
    assert call["receiver_errors"] == 1


def test_no_completed_within_grace_is_webhook_missing_and_before_that_in_progress(spans: SpanFactory) -> None:
    spans.webhook("call_123", "call.initiated", T0)
    spans.webhook("call_123", "call.answered", T0 + 2 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    spans.receiver("call_123", T0 + 3 * S, T0 + 30 * S)
    rows = spans.rows(ingested_at_ns=T0 + 31 * S)
    early = calls_of(rows, as_of=T0 + 60 * S)["call_123"]
    assert (early["verdict"], early["is_final"]) == ("in_progress", False)
    late = calls_of(rows, as_of=T0 + 31 * S + 300 * S)["call_123"]
    assert (late["verdict"], late["failure_stage"], late["is_final"]) == (
        "webhook_missing",
        "lifecycle",
        True,
    )
    assert late["reason"].startswith("no call.completed within 300 s")
    assert "last webhook: call.answered" in late["reason"]
    # The grace period is configuration (CALLSCOPE_GRACE_SECONDS).
    assert calls_of(rows, as_of=T0 + 60 * S, config=RulesConfig(grace_seconds=10))["call_123"]["verdict"] == (
        "webhook_missing"
    )


def test_busy_is_call_failed(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S, final_status="busy", answered=False)
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"]) == ("call_failed", "lifecycle")
    assert call["reason"] == (
        "call.completed reports status busy; the call was never answered, so no stream was expected"
    )


@pytest.mark.parametrize("status", ["failed", "no-answer", "canceled"])
def test_other_final_statuses_are_call_failed(spans: SpanFactory, status: str) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S, final_status=status, answered=False)
    assert judge(spans)["verdict"] == "call_failed"


def test_no_start_stream_is_no_stream(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S)
    spans.answer_url("call_123", T0 + 2 * S, body={"actions": []})
    call = judge(spans)
    assert (call["verdict"], call["failure_stage"]) == ("no_stream", "none")
    assert call["reason"] == "answer_url returned no start_stream action (no actions)"


def test_stop_stream_only_is_no_stream(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 10 * S)
    body = {
        "actions": [
            {"type": "stop_stream", "stream_url": "wss://media.example.com/minivoice", "track": "both"}
        ]
    }
    spans.answer_url("call_123", T0 + 2 * S, body=body)
    call = judge(spans)
    assert call["verdict"] == "no_stream"
    assert "(actions: stop_stream)" in call["reason"]


def test_a_call_still_going_is_in_progress(spans: SpanFactory) -> None:
    spans.webhook("call_123", "call.initiated", T0)
    spans.answer_url("call_123", T0 + 2 * S)
    call = judge(spans, as_of=T0 + 10 * S)
    assert (call["verdict"], call["failure_stage"], call["is_final"]) == ("in_progress", "none", False)


def test_a_failure_seen_during_the_call_shows_at_once_but_is_not_final(spans: SpanFactory) -> None:
    spans.webhook("call_123", "call.initiated", T0)
    spans.answer_url("call_123", T0 + 2 * S, body=BAD_ACTIONS)
    call = judge(spans, as_of=T0 + 10 * S)
    assert (call["verdict"], call["is_final"]) == ("invalid_action", False)


def test_completed_is_final_only_after_settling(spans: SpanFactory) -> None:
    spans.ok_call("call_123")
    rows = spans.rows()
    ingested = rows.column("ingested_at_ns")[0].as_py()
    fresh = calls_of(rows, as_of=ingested + 1 * S)["call_123"]
    assert (fresh["verdict"], fresh["is_final"]) == ("ok", False)
    settled = calls_of(rows, as_of=ingested + 16 * S)["call_123"]
    assert (settled["verdict"], settled["is_final"]) == ("ok", True)


def test_first_failing_step_wins(spans: SpanFactory) -> None:
    # An invalid action AND a busy final status: the action comes first in the debug order.
    spans.lifecycle("call_123", T0, T0 + 10 * S, final_status="failed")
    spans.answer_url("call_123", T0 + 2 * S, body=BAD_ACTIONS)
    assert judge(spans)["verdict"] == "invalid_action"


# ---- traps ------------------------------------------------------------------------------------


def test_duplicate_and_out_of_order_webhooks_change_nothing(spans: SpanFactory) -> None:
    spans.ok_call("call_123")
    plain = judge(spans)
    spans.clear()
    end = T0 + 20 * S + 50 * MS
    # call.completed first, delivered three times; answered twice; ringing after completed.
    spans.webhook("call_123", "call.completed", end, delay_ms=5)
    spans.webhook("call_123", "call.completed", end, delay_ms=900)
    spans.webhook("call_123", "call.completed", end, delay_ms=3000)
    spans.webhook("call_123", "call.answered", T0 + 2 * S, delay_ms=4000)
    spans.webhook("call_123", "call.answered", T0 + 2 * S, delay_ms=4100)
    spans.webhook("call_123", "call.initiated", T0, delay_ms=4200)
    spans.webhook("call_123", "call.ringing", T0 + S, delay_ms=60_000)
    spans.answer_url("call_123", T0 + 2 * S)
    spans.receiver("call_123", T0 + 2 * S + 300 * MS, T0 + 20 * S, frames=885)
    messy = judge(spans)
    for column in ("verdict", "failure_stage", "reason", "next_step", "call_status", "completed_at"):
        assert messy[column] == plain[column], column
    assert messy["webhook_count"] == 7
    assert messy["duplicate_webhooks"] == 3


def test_otlp_retries_storing_a_span_twice_count_it_once(spans: SpanFactory) -> None:
    spans.ok_call("call_123")
    rows = spans.rows()
    twice = pa.concat_tables([rows, rows])
    once = calls_of(rows)["call_123"]
    doubled = calls_of(twice)["call_123"]
    assert doubled["span_count"] == once["span_count"] == rows.num_rows
    assert doubled["media_frames"] == once["media_frames"]
    assert doubled["duplicate_webhooks"] == 0


@pytest.mark.parametrize("skew_s", [4.2, -5.0, 30.0])
def test_receiver_clock_skew_is_detected_and_changes_no_verdict(spans: SpanFactory, skew_s: float) -> None:
    spans.ok_call("call_skewed", skew_ns=int(skew_s * S))
    spans.ok_call("call_dropped", T0 + 100 * S)
    spans.clear()
    # The same calls with a receiver clock off by `skew_s`: one ok, one dropped mid-call.
    spans.ok_call("call_skewed", skew_ns=int(skew_s * S))
    start = T0 + 100 * S
    spans.lifecycle("call_dropped", start, start + 30 * S)
    spans.answer_url("call_dropped", start + 2 * S)
    spans.receiver(
        "call_dropped",
        start + 3 * S,
        start + 10 * S,
        stop_reason=None,
        close_code=1011,
        closed_by="receiver",
        skew_ns=int(skew_s * S),
    )
    calls = calls_of(spans.rows())
    skewed = calls["call_skewed"]
    assert skewed["verdict"] == "ok"
    # The nearest causal bound: within the gap between the true times and the anchors.
    assert abs(skewed["receiver_clock_skew_ms"] - skew_s * 1000) <= 1100
    assert abs(skewed["receiver_clock_skew_ms"]) > 3000
    # Receiver times are reported on the webhook clock.
    assert skewed["connected_at"] > skewed["first_seen_at"]
    assert calls["call_dropped"]["verdict"] == "stream_dropped"


def test_receiver_points_are_moved_onto_the_webhook_clock(spans: SpanFactory) -> None:
    spans.ok_call("call_123", skew_ns=10 * S)
    events = evaluate(spans.rows(), LATER).call_events.to_pylist()
    order = [(e["source"], e["event"]) for e in events]
    at = {(e["source"], e["event"]): e for e in events}
    # Recorded, the receiver's close is 10 s after call.completed; corrected, it is within the
    # second that call.completed's created_at (whole seconds) stands for.
    closed, completed = at["receiver", "connection_closed"], at["webhook", "call.completed"]
    assert (closed["recorded_at"] - completed["ts"]).total_seconds() > 9
    assert abs((closed["ts"] - completed["ts"]).total_seconds()) < 1.1
    assert order.index(("receiver", "connection_open")) > order.index(("answer_url", "answer_url"))
    assert ("pipeline", "clock_skew") in order
    assert order[-1] == ("pipeline", "verdict")


def test_a_span_without_call_id_is_counted_and_shown_never_dropped(spans: SpanFactory) -> None:
    spans.ok_call("call_123")
    spans.receiver(
        None, T0 + 5 * S, T0 + 6 * S, frames=0, stop_reason=None, close_code=1002, closed_by="platform"
    )
    result = evaluate(spans.rows(), LATER)
    assert result.calls.num_rows == 1
    unattributed = result.unattributed.to_pylist()
    assert len(unattributed) == 1
    assert unattributed[0]["source"] == "receiver" and unattributed[0]["name"] == "stream.receiver"


def test_a_late_span_re_evaluates_its_call(spans: SpanFactory) -> None:
    spans.lifecycle("call_123", T0, T0 + 20 * S)
    spans.answer_url("call_123", T0 + 2 * S)
    early = spans.rows()
    assert calls_of(early)["call_123"]["verdict"] == "stream_not_connected"
    spans.receiver("call_123", T0 + 3 * S, T0 + 20 * S)
    assert calls_of(spans.rows())["call_123"]["verdict"] == "ok"


# ---- the rules themselves ---------------------------------------------------------------------


def test_every_verdict_has_a_rule_and_a_general_next_step() -> None:
    ordered = rules.rules(RulesConfig())
    assert {r.verdict for r in ordered} == set(rules.VERDICTS)
    assert [r.verdict for r in ordered][-3:] == ["no_stream", "in_progress", "ok"]
    assert all(next_step_for(v) for v in rules.VERDICTS)
    # Failures come first, in the MiniVoice debug order.
    failure_order = list(dict.fromkeys(r.verdict for r in ordered if r.is_failure))
    assert failure_order == list(rules.FAILURE_VERDICTS)


# ---- two faults on one call: the earliest step in the debug order wins ------------------------

#: Faults a call can suffer, in MiniVoice's debug order, with the verdict each one alone gives.
FAULTS = (
    ("answer_url_500", "answer_url_failed"),
    ("invalid_action", "invalid_action"),
    ("never_connected", "stream_not_connected"),
    ("no_media", "no_media"),
    ("receiver_closed", "stream_dropped"),
    ("receiver_errors", "receiver_error"),
    ("completed_lost", "webhook_missing"),
    ("busy", "call_failed"),
)


def _call_with_faults(spans: SpanFactory, call_id: str, start: int, faults: set[str]) -> None:
    """A streaming call that suffers `faults` (a fault hides what it makes unobservable: a receiver
    that never connected has no media to lack; a lost call.completed has no status)."""
    end = start + 30 * S
    spans.webhook(call_id, "call.initiated", start)
    spans.webhook(call_id, "call.ringing", start + S)
    spans.webhook(call_id, "call.answered", start + 2 * S)
    if "completed_lost" not in faults:
        spans.webhook(call_id, "call.completed", end, status="busy" if "busy" in faults else "completed")
    spans.answer_url(
        call_id,
        start + 2 * S,
        status=500 if "answer_url_500" in faults else 200,
        body=BAD_ACTIONS if "invalid_action" in faults else GOOD_ACTIONS,
    )
    if "never_connected" not in faults:
        closed = "receiver_closed" in faults
        spans.receiver(
            call_id,
            start + 3 * S,
            end - (10 * S if closed else 0),
            frames=0 if "no_media" in faults else 500,
            stop_reason=None if closed else "call_ended",
            close_code=1011 if closed else 1000,
            closed_by="receiver" if closed else "platform",
            errors=[("invalid_json", "frame 17 is not JSON")] if "receiver_errors" in faults else (),
        )


def test_every_combination_of_faults_is_judged_by_its_earliest_step(spans: SpanFactory) -> None:
    names = [name for name, _ in FAULTS]
    combinations = [
        {name for i, name in enumerate(names) if mask >> i & 1} for mask in range(2 ** len(names))
    ]
    for n, faults in enumerate(combinations):
        _call_with_faults(spans, f"call_{n:03d}", T0 + n * 10 * S, faults)
    judged = calls_of(spans.rows())  # an hour after the last call: every call final
    wrong = {}
    for n, faults in enumerate(combinations):
        expected = next((verdict for name, verdict in FAULTS if name in faults), "ok")
        call = judged[f"call_{n:03d}"]
        assert call["is_final"], faults
        if call["verdict"] != expected:
            wrong[", ".join(sorted(faults))] = (call["verdict"], expected)
    assert not wrong, f"(got, expected) by faults: {wrong}"


def test_a_stream_that_never_connected_on_a_call_that_lost_completed_is_stream_not_connected(
    spans: SpanFactory,
) -> None:
    _call_with_faults(spans, "call_123", T0, {"never_connected", "completed_lost"})
    early = judge(spans, as_of=T0 + 60 * S)
    assert (early["verdict"], early["is_final"]) == ("in_progress", False)
    call = judge(spans)  # the grace period expired: absence can be judged
    assert (call["verdict"], call["failure_stage"], call["is_final"]) == (
        "stream_not_connected",
        "connect",
        True,
    )
    assert "receiver recorded no connection" in call["reason"]
    assert "no call.completed" in call["reason"]
