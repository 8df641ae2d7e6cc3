"""The verdict on one call from what the platform alone saw (for `callscope test-call`).

The pipeline's verdicts (`pipeline.rules`, `docs/verdicts.md`) join three logs. A test call
against a user's real endpoints has only the platform's side: the answer_url's response, the
stream's handshake and close, and whether each webhook was acknowledged. The same debug order
applies and the verdict names are the pipeline's. The next step is the pipeline rule's own text
where that is plain text; where the pipeline's is a template over facts only the collectors
record, the text here follows the same template with what the platform saw.

What the platform cannot see: whether the receiver processed the media it was sent
(`no_media` and `receiver_error` need the receiver's log). `test-call` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.rules import (
    ANSWER_URL_FAILED,
    CALL_FAILED,
    FAILED_CALL_STATUSES,
    INVALID_ACTION,
    NO_MEDIA,
    NO_STREAM,
    OK,
    STREAM_DROPPED,
    STREAM_NOT_CONNECTED,
    WEBHOOK_MISSING,
    RulesConfig,
    rules,
)
from simulator.outcome import CallOutcome

STAGES = {rule.verdict: rule.stage for rule in reversed(rules(RulesConfig()))}
"""The failure stage of each verdict, as the pipeline's rules define it."""


@dataclass(frozen=True, slots=True)
class PlatformVerdict:
    """A verdict with its stage, a specific reason and the next thing to check."""

    verdict: str
    failure_stage: str
    reason: str
    next_step: str

    @property
    def ok(self) -> bool:
        return self.verdict == OK


def _literal(sql: str) -> str | None:
    """The text of a SQL string literal such as `'Nothing to do'`, or None for an expression."""
    if len(sql) < 2 or sql[0] != "'" or sql[-1] != "'":
        return None
    inner = sql[1:-1]
    if "'" in inner.replace("''", ""):
        return None  # quotes inside: an expression made of several literals
    return inner.replace("''", "'")


def pipeline_next_step(verdict: str) -> str | None:
    """The next step of the pipeline's (first) rule for `verdict`, if it is plain text."""
    for rule in rules(RulesConfig()):
        if rule.verdict == verdict:
            return _literal(rule.next_step.strip())
    return None


def _verdict(verdict: str, reason: str, next_step: str | None = None) -> PlatformVerdict:
    step = pipeline_next_step(verdict) or next_step or ""
    return PlatformVerdict(verdict, STAGES.get(verdict, "none"), reason, step)


def _answer_url_failed(outcome: CallOutcome, timeout_ms: float) -> PlatformVerdict:
    status = outcome.answer_url_status
    if status is None and "did not answer within" in (outcome.answer_url_error or ""):
        step = (
            f"Make the answer_url answer within {timeout_ms:.0f} ms: keep database writes and "
            "third-party calls off the request path. Check the app log for this call"
        )
    elif status is None or status >= 500:
        step = "Fix the error in the answer_url app: check its log for this call's request"
    elif not 200 <= status < 300:
        step = "The answer_url must answer 200: check the route, method (POST) and authentication"
    else:
        step = (
            'Return JSON {"actions": [...]} with Content-Type: application/json from the answer_url; '
            "check it with `callscope validate FILE`"
        )
    body = f": {outcome.answer_url_body[:80]}" if outcome.answer_url_body and status else ""
    return _verdict(ANSWER_URL_FAILED, f"{outcome.answer_url_error}{body}", step)


def _stream_dropped(outcome: CallOutcome) -> PlatformVerdict | None:
    frames = outcome.media_frames_sent
    if outcome.closed_by == "network":
        return _verdict(
            STREAM_DROPPED,
            f"the connection dropped without a close frame (1006, network) after {frames} media frames, "
            "while the call went on, without a stop",
            "No close frame: check proxies and load balancers between MiniVoice and the receiver for idle "
            "or stream timeouts, and the receiver host for a restart",
        )
    if outcome.closed_by == "receiver" and not (outcome.close_code == 1000 and outcome.stop_sent):
        reason = f": {outcome.close_reason}" if outcome.close_reason else ""
        return _verdict(
            STREAM_DROPPED,
            f"receiver closed with {outcome.close_code}{reason} after {frames} media frames, while the call "
            "went on, without a stop",
            "The receiver ended the stream while the call went on: check its log for the crash or close; "
            "close only after MiniVoice's stop",
        )
    return None


def platform_verdict(
    outcome: CallOutcome, *, expect_webhooks: bool = True, answer_url_timeout_ms: float = 5000
) -> PlatformVerdict:
    """The first failing step of the call, in MiniVoice's debug order, from the platform's view."""
    if outcome.answer_url_status is None and outcome.answer_url_error is None:
        status = outcome.final_status or "unknown"
        return _verdict(
            CALL_FAILED,
            f"call.completed reports status {status}; the call was never answered, so no stream was expected",
            f"The call itself did not complete ({status}): not a streaming problem",
        )
    if outcome.answer_url_error is not None:
        return _answer_url_failed(outcome, answer_url_timeout_ms)
    if outcome.action_valid is False:
        problems = outcome.action_result.get("problems", []) if outcome.action_result else []
        messages = "; ".join(str(p.get("message")).split(". ")[0] for p in problems)
        return _verdict(INVALID_ACTION, messages or ", ".join(outcome.action_problems))
    if outcome.stream_requested:
        if not outcome.connected:
            return _verdict(
                STREAM_NOT_CONNECTED,
                f"answer_url returned a valid start_stream to {outcome.stream_url} (track {outcome.track}), "
                f"but the connection failed: {outcome.connect_error}",
                f"Confirm the receiver accepts WebSocket connections at {outcome.stream_url} from MiniVoice: "
                "DNS, TLS certificate, firewall or load balancer, a 101 handshake",
            )
        if outcome.media_frames_sent == 0 and outcome.closed_by == "platform":
            return _verdict(
                NO_MEDIA,
                "the stream connected and started, but no media was sent (scenario no_media)",
                "Check that MiniVoice sent start with the tracks you asked for and that the call had audio",
            )
        dropped = _stream_dropped(outcome)
        if dropped is not None:
            return dropped
    if expect_webhooks:
        completed = next((w for w in outcome.webhooks if w.event == "call.completed"), None)
        if completed is not None and completed.withheld:
            return _verdict(WEBHOOK_MISSING, "call.completed was never sent (scenario webhook_lost)")
        if completed is not None and not completed.delivered:
            return _verdict(
                WEBHOOK_MISSING,
                f"the webhook endpoint did not acknowledge call.completed after {completed.attempts} "
                f"attempts (last: {completed.last_error})",
            )
    if outcome.final_status in FAILED_CALL_STATUSES:
        status = outcome.final_status
        return _verdict(
            CALL_FAILED,
            f"call.completed reports status {status}",
            f"The call itself did not complete ({status}): not a streaming problem",
        )
    if not outcome.stream_requested:
        return _verdict(NO_STREAM, "answer_url returned no start_stream action")
    return _verdict(
        OK,
        f"{outcome.media_frames_sent} media frames sent; the stream ended with stop and close 1000"
        + ("; call.completed acknowledged" if expect_webhooks else ""),
    )
