"""The verdict rules, in MiniVoice's debug order. The first rule that holds names the call's verdict.

MiniVoice's troubleshooting page: "validate the JSON action, verify the URL uses the wss scheme,
confirm your receiver accepts a WebSocket connection, then compare receiver timestamps with call
webhooks"; "If the receiver disconnects, ... continue waiting for final call webhooks. The call
lifecycle webhook remains the source of truth for call completion."

Each rule is a SQL condition over one derived call row (`pipeline.verdicts` computes its
columns from the call's facts and `as_of`), a reason template filled with the call's specifics,
and the next thing to check, in the docs' own terms. docs/verdicts.md is the human version of this
file; keep them together.

Two kinds of evidence: presence (a span says something went wrong) holds as soon as the span
arrives; absence (no answer_url request, no receiver connection, no call.completed) is judged
only once the call has completed or gone quiet for the grace period. A receiver span is exported
only when its connection closes, so "never connected" needs `call.completed`, not just quiet.
A verdict is final (`is_final`) once the call has also settled: no new span for `settle_seconds`
after completion (late spans may still change it until then), or the grace period expired.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings import Settings

# Verdict names (fixed: relied on by saved SQL, Jaeger tag searches and alerting).
ANSWER_URL_FAILED = "answer_url_failed"
INVALID_ACTION = "invalid_action"
STREAM_NOT_CONNECTED = "stream_not_connected"
NO_MEDIA = "no_media"
STREAM_DROPPED = "stream_dropped"
RECEIVER_ERROR = "receiver_error"
WEBHOOK_MISSING = "webhook_missing"
CALL_FAILED = "call_failed"
OK = "ok"
NO_STREAM = "no_stream"
IN_PROGRESS = "in_progress"

FAILURE_VERDICTS = (
    ANSWER_URL_FAILED,
    INVALID_ACTION,
    STREAM_NOT_CONNECTED,
    NO_MEDIA,
    STREAM_DROPPED,
    RECEIVER_ERROR,
    WEBHOOK_MISSING,
    CALL_FAILED,
)
VERDICTS = (*FAILURE_VERDICTS, NO_STREAM, IN_PROGRESS, OK)
STAGES = ("answer_url", "action", "connect", "media", "stream", "lifecycle", "none")
#: Final statuses of `call.completed` that mean the call itself did not happen.
FAILED_CALL_STATUSES = ("failed", "busy", "no-answer", "canceled")

#: RFC 6455 close codes, named the way an on-call engineer searches for them.
CLOSE_CODE_NAMES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1005: "no status code",
    1006: "abnormal closure, no close frame",
    1007: "invalid payload data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
    1014: "bad gateway",
    1015: "TLS handshake failure",
}


DEFAULT_SETTLE_SECONDS = 15


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """What the verdicts depend on besides the spans and the time.

    `grace_seconds`: how long after a call's last span to wait for `call.completed`;
    `settle_seconds`: how long after `call.completed` (and the call's last span) to wait for
    late spans before the verdict is final; `answer_url_timeout_ms`: MiniVoice's answer_url
    timeout; `skew_tolerance_ms`: receiver clock offsets within this are reported as 0.
    """

    grace_seconds: int = 300
    settle_seconds: int = DEFAULT_SETTLE_SECONDS
    answer_url_timeout_ms: int = 5000
    skew_tolerance_ms: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: int) -> RulesConfig:
        """The config of a pipeline process (CALLSCOPE_GRACE_SECONDS, CALLSCOPE_ANSWER_URL_TIMEOUT_MS)."""
        values = {
            "grace_seconds": settings.grace_seconds,
            # Never wait longer for stragglers after completion than without it.
            "settle_seconds": min(DEFAULT_SETTLE_SECONDS, settings.grace_seconds),
            "answer_url_timeout_ms": settings.answer_url_timeout_ms,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Rule:
    """One step of the debug order: when it holds, the verdict, stage, reason and next step."""

    verdict: str
    stage: str
    when: str
    reason: str
    next_step: str

    @property
    def is_failure(self) -> bool:
        return self.verdict in FAILURE_VERDICTS


# ---- SQL helpers for reason templates -----------------------------------------------------------


def lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def cat(*parts: str) -> str:
    """SQL concatenation that treats NULL parts as empty."""
    return "concat(" + ", ".join(parts) + ")"


def seconds(ns: str) -> str:
    """SQL: a nanosecond duration as "14.2 s", or "38 ms" under a second ("0.0 s" says nothing)."""
    # DECIMAL casts rather than printf: a million reasons are formatted per build.
    return (
        f"CASE WHEN abs({ns}) < 1e9 THEN CAST(CAST(({ns}) / 1e6 AS DECIMAL(18, 0)) AS VARCHAR) || ' ms' "
        f"ELSE CAST(CAST(({ns}) / 1e9 AS DECIMAL(18, 1)) AS VARCHAR) || ' s' END"
    )


def clock(ns: str) -> str:
    """SQL: a unix-nanosecond time as "12:10:00.123Z" (UTC; the date is in the timeline)."""
    return f"strftime(make_timestamp(({ns}) // 1000), '%H:%M:%S.%g') || 'Z'"


def close_code_text(code: str, reason: str) -> str:
    """SQL: "1011 (internal error: transcriber crashed)" from a close code and reason."""
    names = " ".join(f"WHEN {number} THEN {lit(name)}" for number, name in CLOSE_CODE_NAMES.items())
    name = f"CASE {code} {names} ELSE 'application code' END"
    detail = f"CASE WHEN coalesce({reason}, '') <> '' THEN ': ' || {reason} ELSE '' END"
    return (
        f"CASE WHEN {code} IS NULL THEN 'no close code' ELSE {code} || ' (' || {name} || {detail} || ')' END"
    )


def close_description(code: str, closed_by: str, reason: str) -> str:
    """SQL: "close 1011 (internal error: transcriber crashed) by receiver" from struct fields."""
    return cat(
        f"'close ' || {close_code_text(code, reason)}",
        f"' by ' || coalesce({closed_by}, 'an unknown side')",
    )


SLOW_WORK = "keep database writes and third-party calls off the request path"


def _before_completion() -> str:
    return (
        "CASE WHEN stream_ended_before_call_ms > 0 "
        f"THEN ' ' || {seconds('stream_ended_before_call_ms * 1e6')} || ' before call.completed' "
        "WHEN completed_ns IS NULL THEN ' while the call went on' ELSE '' END"
    )


def rules(config: RulesConfig) -> list[Rule]:
    """The ordered rules. Failures in debug order first, then no_stream, in_progress, ok."""
    timeout = config.answer_url_timeout_ms
    au_f = "au_last_failed"
    au_reason = cat(
        f"CASE WHEN {au_f}.status IS NULL THEN "
        f"'the answer_url request failed without an HTTP response' || "
        f"coalesce(' (' || {au_f}.error_type || ')', '') "
        f"WHEN {au_f}.latency_ms > {timeout} THEN "
        f"printf('answer_url answered after %.0f ms; MiniVoice waits at most {timeout} ms, "
        f"so the HTTP %d came too late', {au_f}.latency_ms, {au_f}.status) "
        f"WHEN {au_f}.status NOT BETWEEN 200 AND 299 THEN "
        f"printf('answer_url answered HTTP %d in %.0f ms', {au_f}.status, {au_f}.latency_ms) "
        f"ELSE printf('answer_url answered HTTP %d with a body that is not JSON', {au_f}.status) END",
        f"CASE WHEN {au_f}.body IS NOT NULL AND NOT coalesce({au_f}.is_json, false) "
        f"THEN ': ' || left({au_f}.body, 80) ELSE '' END",
        "CASE WHEN au_requests > 1 THEN printf(' (%d requests, none usable)', au_requests) ELSE '' END",
    )
    au_next = (
        f"CASE WHEN {au_f}.latency_ms > {timeout} THEN "
        f"{lit(f'Make the answer_url answer within {timeout} ms: {SLOW_WORK}. ')}"
        f" || 'Check the app log for the request at ' || {clock(f'{au_f}.t')} "
        f"WHEN {au_f}.status IS NULL OR {au_f}.status >= 500 THEN "
        f"'Fix the error in the answer_url app: check its log for the request at ' || {clock(f'{au_f}.t')} "
        f"WHEN {au_f}.status NOT BETWEEN 200 AND 299 THEN "
        "'The answer_url must answer 200: check the route, method (POST) and authentication for ' || "
        f"coalesce({au_f}.path, 'the answer_url') "
        'ELSE \'Return JSON {"actions": [...]} with Content-Type: application/json from the answer_url; '
        "check it with `callscope validate FILE`' END"
    )
    problems = "coalesce(au_first_ok.messages, au_first_ok.problems)"
    first_sentences = f"array_to_string(list_transform({problems}, lambda m: split_part(m, '. ', 1)), '; ')"
    drop = "rx_first_drop"
    drop_close = close_code_text(f"{drop}.code", f"{drop}.reason")
    return [
        # 1. answer_url: MiniVoice must get a usable answer before anything else can work.
        Rule(
            ANSWER_URL_FAILED,
            "answer_url",
            "au_requests > 0 AND au_first_ok IS NULL",
            au_reason,
            au_next,
        ),
        Rule(
            ANSWER_URL_FAILED,
            "answer_url",
            "au_requests = 0 AND answered AND rx_connections = 0 AND concluded",
            cat(
                "'no answer_url request was recorded for this answered call ('",
                "CASE WHEN wh_answered_n > 0 THEN 'call.answered' ELSE 'call.completed: ' || "
                "coalesce(completed_status, '?') END",
                "' arrived, but the answer_url collector saw no request)'",
            ),
            lit(
                "Check that MiniVoice can reach the application's answer_url (URL, DNS, TLS, firewall) "
                "and that the answer_url collector is installed in front of it"
            ),
        ),
        # 2. validate the JSON action: MiniVoice validates it before executing it.
        Rule(
            INVALID_ACTION,
            "action",
            "au_first_ok IS NOT NULL AND NOT coalesce(au_first_ok.valid, false) AND NOT only_no_actions",
            cat(
                f"CASE WHEN len({problems}) > 0 THEN {first_sentences} "
                "ELSE 'MiniVoice would reject the action' END",
            ),
            lit(
                "Fix the action the answer_url returns: start_stream needs a secure wss:// stream_url and "
                "track inbound, outbound or both; check a response with `callscope validate FILE`"
            ),
        ),
        # 3. confirm the receiver accepted a WebSocket connection (only once the call concluded:
        #    an open connection is invisible until it closes). A call whose call.completed was lost
        #    too is judged here once the grace period expires: the earlier step failed first.
        Rule(
            STREAM_NOT_CONNECTED,
            "connect",
            "start_stream AND rx_connections = 0 AND concluded",
            cat(
                "'answer_url returned a valid start_stream to ' || coalesce(au_first_ok.stream_url, '?')",
                "coalesce(' (track ' || au_first_ok.track || ')', '')",
                "', but the receiver recorded no connection '",
                "CASE WHEN completed_ns IS NOT NULL THEN 'before call.completed' ELSE "
                f"'and no call.completed came within {config.grace_seconds} s of the call''s last span' END",
            ),
            cat(
                "'Confirm the receiver accepts WebSocket connections at ' || "
                "coalesce(au_first_ok.stream_url, 'the stream_url')",
                "' from MiniVoice: DNS, TLS certificate, firewall or load balancer, a 101 handshake; "
                "and that the receiver collector wraps that endpoint. A connection dropped before "
                "MiniVoice''s start message carries no call id (see unattributed_spans) unless the "
                "stream_url has ?call_id='",
            ),
        ),
        # 4. media: the receiver log shows whether media arrived.
        Rule(
            NO_MEDIA,
            "media",
            "rx_connections > 0 AND media_frames = 0",
            cat(
                "'receiver accepted the connection'",
                f"' but no media arrived in ' || {seconds('rx_last_ns - rx_first_ns')}",
                "'; it ended with ' || CASE WHEN rx_last.stopped THEN 'stop' || "
                "coalesce(' (' || rx_last.stop_reason || ')', '') || ' and ' ELSE '' END",
                close_description("rx_last.code", "rx_last.closed_by", "rx_last.reason"),
            ),
            cat(
                "'Check that MiniVoice sent start with the tracks you asked for'",
                "coalesce(' (' || au_first_ok.track || ')', '')",
                "' and that the call had audio; check the receiver reads frames as they arrive'",
            ),
        ),
        # 5. compare receiver timestamps with call webhooks: did the stream last as long as the call?
        Rule(
            STREAM_DROPPED,
            "stream",
            "rx_dropped > 0",
            cat(
                f"CASE WHEN {drop}.closed_by = 'network' OR {drop}.code = 1006 "
                "THEN 'the connection dropped without a close frame (1006, network)' "
                f"WHEN {drop}.closed_by = 'receiver' THEN 'receiver closed with ' || "
                f"{drop_close} "
                f"ELSE 'MiniVoice closed with ' || {drop_close} END",
                _before_completion(),
                "', without a stop'",
                "CASE WHEN rx_connections > 1 THEN printf(' (%d connections, %d dropped)', "
                "rx_connections, rx_dropped) ELSE '' END",
            ),
            cat(
                f"CASE WHEN {drop}.closed_by = 'receiver' THEN "
                "'The receiver ended the stream while the call went on: check its log around ' || "
                f"{clock(f'{drop}.t')} || ' for the crash or close; close only after MiniVoice''s stop' "
                f"WHEN {drop}.closed_by = 'network' OR {drop}.code = 1006 THEN "
                "'No close frame: check proxies and load balancers between MiniVoice and the receiver "
                "for idle or stream timeouts, and the receiver host for a restart around ' || "
                f"{clock(f'{drop}.t')} "
                "ELSE 'MiniVoice closed the stream: check what the receiver sent or failed to read just "
                f"before ' || {clock(f'{drop}.t')} END",
            ),
        ),
        Rule(
            RECEIVER_ERROR,
            "stream",
            "rx_errors > 0",
            cat(
                "printf('receiver recorded %d error(s)', rx_errors)",
                "coalesce('; first: ' || rx_first_error.type "
                "|| coalesce(': ' || rx_first_error.message, ''), '')",
            ),
            cat(
                "'Check the receiver log'",
                "coalesce(' around ' || " + clock("rx_first_error.t") + ", '')",
                "': it must handle MiniVoice''s JSON text frames (connected, start, media, stop) "
                "and keep slow work off the hot path'",
            ),
        ),
        # 6. the lifecycle webhook is the source of truth for completion.
        Rule(
            WEBHOOK_MISSING,
            "lifecycle",
            "expired",
            cat(
                f"'no call.completed within {config.grace_seconds} s of the call''s last span ('",
                clock("last_activity_ns"),
                "')'",
                "coalesce('; last webhook: ' || wh_latest.event, '; no webhook at all')",
            ),
            lit(
                "Check MiniVoice's webhook deliveries for this call: the webhook URL, that it answers 2xx "
                "quickly, and that the webhook collector is installed; call.completed is the source of "
                "truth for completion"
            ),
        ),
        Rule(
            CALL_FAILED,
            "lifecycle",
            f"completed_status IN {FAILED_CALL_STATUSES!r}",
            cat(
                "'call.completed reports status ' || completed_status",
                "CASE WHEN rx_connections = 0 AND au_requests = 0 "
                "THEN '; the call was never answered, so no stream was expected' ELSE '' END",
            ),
            cat(
                "'The call itself did not complete (' || completed_status || '): check the numbers and "
                "the call in MiniVoice; this is not a streaming problem'",
            ),
        ),
        # Not failures.
        Rule(
            NO_STREAM,
            "none",
            "au_first_ok IS NOT NULL AND NOT start_stream AND completed_ns IS NOT NULL",
            cat(
                "'answer_url returned no start_stream action'",
                "CASE WHEN coalesce(au_first_ok.types, '') <> '' "
                "THEN ' (actions: ' || replace(au_first_ok.types, ',', ', ') || ')' "
                "ELSE ' (no actions)' END",
            ),
            lit(
                "Nothing to fix if this call was not meant to stream; "
                "otherwise return start_stream from answer_url"
            ),
        ),
        Rule(
            IN_PROGRESS,
            "none",
            "NOT concluded",
            f"'waiting for call.completed (last span ' || {clock('last_activity_ns')} || ')'",
            lit(
                f"Nothing yet: without call.completed the verdict becomes final {config.grace_seconds} s "
                "after the call's last span"
            ),
        ),
        Rule(
            OK,
            "none",
            "true",
            cat(
                "CASE WHEN rx_connections > 0 THEN CAST(media_frames AS VARCHAR) || ' media frames over ' || "
                f"{seconds('rx_last_ns - rx_first_ns')} || '; the stream ended with ' || "
                "CASE WHEN rx_last.stopped THEN 'stop' || coalesce(' (' || rx_last.stop_reason || ')', '') "
                "|| ' and ' ELSE '' END || "
                + close_description("rx_last.code", "rx_last.closed_by", "rx_last.reason")
                + " ELSE 'no stream recorded' END",
                "'; call.completed: ' || coalesce(completed_status, '?')",
            ),
            lit("Nothing to do"),
        ),
    ]


#: The next step of each verdict in general terms (the rules say it with the call's specifics).
NEXT_STEPS = {
    ANSWER_URL_FAILED: "Check the answer_url app's log for the request: MiniVoice needs 2xx JSON "
    '{"actions": [...]} within the timeout, and must be able to reach the URL',
    INVALID_ACTION: "Fix the action the answer_url returns: start_stream needs a secure wss:// stream_url "
    "and track inbound, outbound or both; check it with `callscope validate FILE`",
    STREAM_NOT_CONNECTED: "Confirm the receiver accepts WebSocket connections at the stream_url from "
    "MiniVoice: DNS, TLS certificate, firewall or load balancer, a 101 handshake",
    NO_MEDIA: "Check that MiniVoice sent start with the requested tracks and that the call had audio",
    STREAM_DROPPED: "Check the receiver log at the close for a crash or early close (close only after "
    "MiniVoice's stop), or proxies for idle timeouts when no close frame arrived (1006)",
    RECEIVER_ERROR: "Check the receiver log for the errors: it must handle MiniVoice's JSON text frames "
    "and keep slow work off the hot path",
    WEBHOOK_MISSING: "Check MiniVoice's webhook deliveries: the webhook URL, a fast 2xx answer, and that "
    "the webhook collector is installed",
    CALL_FAILED: "The call itself did not complete (failed, busy, no-answer or canceled): check the numbers "
    "and the call in MiniVoice; not a streaming problem",
    NO_STREAM: "Nothing to fix if the call was not meant to stream; otherwise return start_stream",
    IN_PROGRESS: "Nothing yet: wait for call.completed",
    OK: "Nothing to do",
}
