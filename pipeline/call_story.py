"""One call's story, as the call detail page tells it: pure functions of the call's spans and row.

- `answer_url_response`: the answer_url response as recorded, pretty-printed, each of MiniVoice's
  objections attached to the line it is about;
- `timeline_marks`: the spans and their events as bars and points on one time axis;
- `clock_skew_note`: plain words when the receiver's clock is off.

No I/O: the rows come from `pipeline.dashboard_queries` (`call_row`, `call_spans`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

#: Skew beyond which the call detail page explains the receiver clock (verdicts never depend on it).
CLOCK_SKEW_NOTE_MS = 1000


def span_attributes(span: Mapping[str, Any]) -> dict[str, Any]:
    """A stored span's attributes as a dict."""
    raw = span.get("attributes")
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class ResponseLine:
    """One line of the pretty-printed answer_url response, and the problems that point at it."""

    text: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AnswerUrlResponse:
    """The answer_url response as recorded, pretty-printed, with MiniVoice's objections attached."""

    status_code: int | None
    is_json: bool
    truncated: bool
    lines: tuple[ResponseLine, ...]
    problems: tuple[str, ...]
    """Every problem message, including those that point at no line (a non-JSON body)."""


def answer_url_response(spans: Sequence[Mapping[str, Any]]) -> AnswerUrlResponse | None:
    """The last answer_url response of a call, pretty-printed, each problem attached to its line.

    The problems are the ones the collector recorded (it saw the real body). The stored body is
    re-read with the same validator only to learn each problem's action index and field, and the
    line of that field (or of that action) carries the message. A body that is not JSON or was
    cut short is shown as recorded, with the problems above it.
    """
    from collectors.actions import check_actions

    answer_spans = [s for s in spans if s.get("source") == "answer_url"]
    if not answer_spans:
        return None
    span = max(answer_spans, key=lambda s: int(s["start_ns"]))
    attributes = span_attributes(span)
    body = attributes.get("minivoice.answer_url.response_body")
    status = attributes.get("http.response.status_code")
    truncated = bool(attributes.get("minivoice.answer_url.response_truncated"))
    recorded = [str(m) for m in attributes.get("minivoice.action.problem_messages") or []]
    if not isinstance(body, str):
        return AnswerUrlResponse(
            int(status) if isinstance(status, int) else None, False, truncated, (), tuple(recorded)
        )
    # The collector validated the real body; trust its verdict. The body stored is redacted and may
    # be cut short, so it is re-read only to find the line each problem is about.
    recorded_codes = attributes.get("minivoice.action.problems")
    check = check_actions(body.encode("utf-8"))
    located = [
        p for p in check.problems if recorded_codes is None or p.code in [str(c) for c in recorded_codes]
    ]
    if recorded_codes is None:
        recorded = [p.message for p in check.problems]
    code = int(status) if isinstance(status, int) else None
    if not check.is_json or truncated:
        lines = tuple(ResponseLine(line) for line in body.splitlines() or [body])
        return AnswerUrlResponse(code, check.is_json, truncated, lines, tuple(recorded))
    pretty = _pretty_lines(json.loads(body))
    attached: dict[int, list[str]] = {}
    for problem in located:
        path: tuple[str | int, ...] = ("actions",)
        if problem.index is not None:
            path += (problem.index,)
        if problem.field and problem.field != "actions":
            path += (problem.field,)
        where = next((i for i, (_, p) in enumerate(pretty) if p == path), None)
        if where is not None and problem.code != "not_an_object":
            attached.setdefault(where, []).append(problem.message)
    lines = tuple(ResponseLine(text, tuple(attached.get(i, ()))) for i, (text, _) in enumerate(pretty))
    return AnswerUrlResponse(code, True, truncated, lines, tuple(recorded))


def _pretty_lines(
    value: Any, path: tuple[str | int, ...] = (), indent: int = 0, prefix: str = "", comma: bool = False
) -> list[tuple[str, tuple[str | int, ...]]]:
    """`json.dumps(value, indent=2)` split into lines, each with the JSON path it belongs to."""
    pad = "  " * indent
    tail = "," if comma else ""
    if isinstance(value, dict) and value:
        out = [(f"{pad}{prefix}{{", path)]
        items = list(value.items())
        for i, (key, item) in enumerate(items):
            out += _pretty_lines(
                item, (*path, str(key)), indent + 1, json.dumps(str(key)) + ": ", i < len(items) - 1
            )
        return [*out, (f"{pad}}}{tail}", path)]
    if isinstance(value, list) and value:
        out = [(f"{pad}{prefix}[", path)]
        for i, item in enumerate(value):
            out += _pretty_lines(item, (*path, i), indent + 1, "", i < len(value) - 1)
        return [*out, (f"{pad}]{tail}", path)]
    return [(f"{pad}{prefix}{json.dumps(value, ensure_ascii=False)}{tail}", path)]


def clock_skew_note(call: Mapping[str, Any], threshold_ms: int = CLOCK_SKEW_NOTE_MS) -> str | None:
    """A plain-words note when the receiver's clock is off by more than `threshold_ms`."""
    skew = call.get("receiver_clock_skew_ms")
    if skew is None or abs(float(skew)) <= threshold_ms:
        return None
    direction = "ahead of" if float(skew) > 0 else "behind"
    return (
        f"The stream receiver's clock is at least {abs(float(skew)) / 1000:.1f} s {direction} MiniVoice's "
        "(the webhook times). The chart shows receiver times as the receiver recorded them; the timeline "
        "events are moved onto MiniVoice's clock. The verdict does not depend on it. "
        "Check NTP on the receiver host."
    )


@dataclass(frozen=True, slots=True)
class TimelineMark:
    """One thing on the call detail chart: a bar from start to end, or a point at start."""

    lane: str
    label: str
    start: datetime
    end: datetime
    kind: str
    """`span`, `event` or `problem` (drawn in the failure colour)."""
    detail: str = ""
    bar: bool = False
    """Drawn as a bar (the answer_url request, the stream connection, the whole call)."""


_LANES = {"answer_url": "answer_url", "receiver": "stream", "webhook": "webhooks", "pipeline": "call"}


def span_time(ns: int) -> str:
    """Epoch nanoseconds as `YYYY-MM-DD HH:MM:SS.ffffff` UTC, for tables of spans."""
    return f"{_dt(ns):%Y-%m-%d %H:%M:%S.%f}"


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC) + timedelta(
        microseconds=(ns % 1_000_000_000) // 1000
    )


def timeline_marks(spans: Sequence[Mapping[str, Any]]) -> list[TimelineMark]:
    """The call detail chart on one time axis, from the call's spans.

    answer_url and each webhook are bars (request to response); the stream connection is a bar
    from open to close, with points for connected, start, first and last media, stop and errors,
    and the disconnect labelled with its close code and who closed it. The largest media gap is
    drawn ending at the last media frame when that is where it was measured, otherwise noted.
    """
    marks: list[TimelineMark] = []
    for span in spans:
        source = str(span.get("source") or "")
        lane = _LANES.get(source, source or "other")
        attributes = span_attributes(span)
        start, end = _dt(int(span["start_ns"])), _dt(int(span["end_ns"]))
        failed = span.get("status_code") == "ERROR"
        if source == "webhook":
            label = str(attributes.get("minivoice.event") or span.get("name"))
            if attributes.get("minivoice.webhook.duplicate"):
                label += " (duplicate)"
            detail = f"call.status={attributes.get('minivoice.call.status')}"
            marks.append(TimelineMark(lane, label, start, end, "problem" if failed else "span", detail))
        elif source == "answer_url":
            status = attributes.get("http.response.status_code")
            latency = attributes.get("minivoice.answer_url.latency_ms")
            detail = f"HTTP {status}" + (f", {float(latency):.0f} ms" if latency is not None else "")
            marks.append(
                TimelineMark(
                    lane, "answer_url", start, end, "problem" if failed else "span", detail, bar=True
                )
            )
        elif source == "receiver":
            frames = attributes.get("minivoice.media.frames")
            marks.append(
                TimelineMark(
                    lane, "stream connection", start, end, "span", f"{frames or 0} media frames", bar=True
                )
            )
            for event in span.get("events") or []:
                name = str(event.get("name"))
                try:
                    event_attributes = json.loads(event.get("attributes") or "{}")
                except ValueError:
                    event_attributes = {}
                at = _dt(int(event["time_ns"]))
                kind = "problem" if name == "error" else "event"
                detail = str(
                    event_attributes.get("error.type") or event_attributes.get("minivoice.stop.reason") or ""
                )
                marks.append(TimelineMark(lane, name.replace("_", " "), at, at, kind, detail))
            last_media_ns = attributes.get("minivoice.media.last_at_unix_nano")
            if isinstance(last_media_ns, int):
                at = _dt(last_media_ns)
                marks.append(TimelineMark(lane, "last media", at, at, "event", ""))
                gap = attributes.get("minivoice.media.gap_max_ms")
                if isinstance(gap, int | float) and gap >= 1000:
                    marks.append(
                        TimelineMark(lane, f"largest media gap {gap / 1000:.1f} s", at, at, "problem", "")
                    )
            code = attributes.get("minivoice.close.code")
            closed_by = attributes.get("minivoice.closed_by")
            clean = code == 1000
            marks.append(
                TimelineMark(
                    lane,
                    f"disconnect {code if code is not None else '?'}"
                    + (f" by {closed_by}" if closed_by else ""),
                    end,
                    end,
                    "event" if clean else "problem",
                    str(attributes.get("minivoice.close.reason") or ""),
                )
            )
        elif span.get("name") == "minivoice.call":
            # The pipeline's root span: the whole call, start to end, with its verdict.
            verdict = attributes.get("callscope.verdict") or "?"
            reason = str(attributes.get("callscope.reason") or "")
            kind = "problem" if failed else "span"
            marks.append(TimelineMark(lane, f"call: {verdict}", start, end, kind, reason, bar=True))
        else:
            marks.append(
                TimelineMark(lane, str(span.get("name")), start, end, "problem" if failed else "span")
            )
    return sorted(marks, key=lambda m: (m.start, m.lane))
