"""The verdict on one call from what the platform alone saw (for `callscope test-call`).

The pipeline's verdicts (`docs/verdicts.md`) join three logs. A test call against a user's
real endpoints has only the platform's side: the answer_url's response, the stream's handshake
and close, and whether each webhook was acknowledged. The same debug order applies, and the
same verdict names; the next step for each verdict comes from the pipeline's own rules
(`pipeline.verdicts`) when they are importable, so the advice reads the same everywhere.

What the platform cannot see: whether the receiver processed the media it was sent
(`no_media` and `receiver_error` need the receiver's log). `test-call` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.outcome import CallOutcome

FAILED_STATUSES = ("failed", "busy", "no-answer", "canceled")

FALLBACK_NEXT_STEPS = {
    "answer_url_failed": "Check the answer_url service: its logs for this call, its status code and latency; "
    'it must answer within the timeout with JSON {"actions": [...]}.',
    "invalid_action": "Fix the action the answer_url returns: start_stream needs a wss:// stream_url and "
    "track inbound, outbound or both. Log answer_url responses during testing.",
    "stream_not_connected": "Confirm your receiver accepts a WebSocket connection at the stream_url: DNS, "
    "port open, TLS certificate trusted, handshake answered with 101.",
    "no_media": "The stream connected but no media arrived: check that the call has audio on the "
    "requested track, and the receiver's read loop.",
    "stream_dropped": "The stream ended before the call did, without a stop: check the receiver's logs at "
    "the close time (close code and reason) and the network path; the call itself went on.",
    "receiver_error": "Check the receiver's error log for this call.",
    "webhook_missing": "call.completed did not arrive: check that the webhook endpoint answers 2xx quickly "
    "and is reachable from MiniVoice; the webhook is the source of truth for completion.",
    "call_failed": "The call itself failed (busy, no answer, failed or canceled): not a streaming problem.",
    "ok": "Nothing to do.",
    "no_stream": "The answer_url asked for no stream; return start_stream if this call needs live audio.",
}

STAGES = {
    "answer_url_failed": "answer_url",
    "invalid_action": "action",
    "stream_not_connected": "connect",
    "no_media": "media",
    "stream_dropped": "stream",
    "receiver_error": "stream",
    "webhook_missing": "lifecycle",
    "call_failed": "lifecycle",
    "ok": "none",
    "no_stream": "none",
}


@dataclass(frozen=True, slots=True)
class PlatformVerdict:
    """A verdict with its stage, a specific reason and the next thing to check."""

    verdict: str
    failure_stage: str
    reason: str
    next_step: str

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def next_step(verdict: str) -> str:
    """The pipeline's next step for `verdict`, or this module's fallback text."""
    try:
        from pipeline import verdicts  # type: ignore[attr-defined]

        text = verdicts.next_step_for(verdict)
    except (ImportError, AttributeError, KeyError, TypeError):
        text = None
    return str(text) if text else FALLBACK_NEXT_STEPS.get(verdict, "")


def _verdict(verdict: str, reason: str) -> PlatformVerdict:
    return PlatformVerdict(verdict, STAGES[verdict], reason, next_step(verdict))


def platform_verdict(outcome: CallOutcome, *, expect_webhooks: bool = True) -> PlatformVerdict:
    """The first failing step of the call, in MiniVoice's debug order, from the platform's view."""
    if outcome.answer_url_status is None and outcome.answer_url_error is None:
        # Never answered: no answer_url request at all.
        status = outcome.final_status or "unknown"
        return _verdict("call_failed", f"the call was not answered (final status {status})")
    if outcome.answer_url_error is not None:
        return _verdict("answer_url_failed", outcome.answer_url_error)
    if outcome.action_valid is False:
        problems = outcome.action_result.get("problems", []) if outcome.action_result else []
        messages = "; ".join(str(p.get("message")) for p in problems) or ", ".join(outcome.action_problems)
        return _verdict("invalid_action", messages)
    if outcome.stream_requested:
        if not outcome.connected:
            return _verdict("stream_not_connected", outcome.connect_error or "the stream did not connect")
        if outcome.media_frames_sent == 0 and outcome.closed_by == "platform":
            return _verdict("no_media", "the stream connected and started, but no media was sent")
        if outcome.closed_by == "network":
            return _verdict(
                "stream_dropped",
                f"the connection dropped without a close frame (1006) after {outcome.media_frames_sent} "
                "media frames, before the call ended",
            )
        if outcome.closed_by == "receiver" and not (outcome.close_code == 1000 and outcome.stop_sent):
            reason = f" ({outcome.close_reason})" if outcome.close_reason else ""
            return _verdict(
                "stream_dropped",
                f"the receiver closed the stream with {outcome.close_code}{reason} after "
                f"{outcome.media_frames_sent} media frames, before the call ended and without a stop",
            )
    if expect_webhooks:
        completed = [w for w in outcome.webhooks if w.event == "call.completed"]
        if completed and completed[0].withheld:
            return _verdict("webhook_missing", "call.completed was never sent (scenario webhook_lost)")
        if completed and not completed[0].delivered:
            w = completed[0]
            return _verdict(
                "webhook_missing",
                f"the webhook endpoint did not acknowledge call.completed after {w.attempts} attempts "
                f"(last: {w.last_error})",
            )
    if outcome.final_status in FAILED_STATUSES:
        return _verdict("call_failed", f"call.completed has status {outcome.final_status}")
    if not outcome.stream_requested:
        return _verdict("no_stream", "the answer_url returned valid actions without start_stream")
    return _verdict(
        "ok",
        f"answer_url valid, stream connected, {outcome.media_frames_sent} media frames, stop and close 1000"
        + (", call.completed acknowledged" if expect_webhooks else ""),
    )
