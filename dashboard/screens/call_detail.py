"""Call detail: one call's whole story. The URL `.../call?call_id=<id>` is shareable."""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

import altair as alt
import polars as pl
import streamlit as st

from dashboard import ui
from pipeline import call_story as story
from pipeline import dashboard_queries as q
from pipeline.queries import close_matches

settings = ui.settings()

st.title("Call detail")
call_id = st.text_input(
    "Call id",
    key="call_id",
    bind="query-params",
    placeholder="call_123 (or open a call from the Calls page)",
).strip()
if not call_id:
    st.info("Enter a call id, or open a call from the **Calls** page.", icon=":material/search:")
    st.stop()

with ui.connection() as con:
    detail = q.call_detail(con, call_id)
    call, events, spans = detail.call, detail.events, detail.spans
    similar = close_matches(con, call_id) if call is None and not spans else []

if call is None and not spans:
    st.warning(
        f"Nothing is stored about call `{call_id}` in `{settings.data_dir}`. Check the id (search it on the "
        "**Calls** page), and that the collectors send to this data directory.",
        icon=":material/search_off:",
    )
    if similar:
        st.markdown("Did you mean " + ", ".join(f"[`{c}`](call?call_id={c})" for c in similar) + "?")
    st.stop()


def _first_seen(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if isinstance(value, datetime) else "–"


def _when(value: Any) -> str:
    return "–" if value is None else f"{value:%H:%M:%S.%f}"[:-3]


def banner(call: dict[str, Any]) -> None:
    """The verdict, the next step first, then the reason, in the verdict's colour."""
    verdict = str(call.get("verdict") or "unknown")
    stage = str(call.get("failure_stage") or "none")
    meaning = ui.VERDICT_MEANINGS.get(verdict, "")
    lines = [f"### {verdict}" + (f" · failed at **{stage}**" if stage != "none" else "")]
    if call.get("next_step"):
        lines.append(f"**Next step:** {call['next_step']}")
    if call.get("reason"):
        lines.append(f"**Why:** {call['reason']}")
    elif meaning:
        lines.append(meaning)
    body = "\n\n".join(lines)
    if stage != "none":
        st.error(body, icon=":material/error:")
    elif verdict == "ok":
        st.success(body, icon=":material/check_circle:")
    else:
        st.info(body, icon=":material/hourglass_top:" if verdict == "in_progress" else ":material/info:")


if call is None:
    st.warning(
        "Spans are stored for this call, but its timeline is not built yet: run "
        f"`callscope build --data {settings.data_dir}` (or keep `--follow` running).",
        icon=":material/build:",
    )
else:
    banner(call)
    status = call.get("answer_url_status")
    valid = call.get("action_valid")
    code = call.get("close_code")
    duplicates = int(call.get("duplicate_webhooks") or 0)
    facts = [
        (
            "answer_url",
            "–" if status is None else f"HTTP {status}",
            None if valid is None else ("valid action" if valid else "invalid action"),
        ),
        (
            "stream",
            "connected" if call.get("connected_at") is not None else "not connected",
            f"{int(call.get('media_frames') or 0):,} media frames",
        ),
        (
            "close",
            "–" if code is None else str(code),
            f"by {call['closed_by']}" if call.get("closed_by") else None,
        ),
        ("webhooks", str(call.get("webhook_count") or 0), f"{duplicates} duplicates" if duplicates else None),
        ("call status", str(call.get("call_status") or "–"), None),
    ]
    for column, (label, value, note) in zip(st.columns(len(facts)), facts, strict=True):
        with column.container(border=True):
            st.caption(label)
            st.markdown(f"**{value}**")
            if note:
                st.caption(note)
    note = story.clock_skew_note(call)
    if note:
        st.warning(note, icon=":material/schedule:")
    st.caption(
        f"application `{call.get('application_id')}` · customer `{call.get('customer_id')}` · "
        f"{call.get('direction') or '?'} · first seen {_first_seen(call.get('first_seen_at'))} · "
        f"stream_url `{call.get('stream_url') or '–'}` · track `{call.get('track') or '–'}`"
    )

LANE_ORDER = ("answer_url", "stream", "webhooks", "call")
KIND_COLOURS = {"span": "#94a3b8", "event": "#2563eb", "problem": "#dc2626"}


def timeline_chart(marks: list[story.TimelineMark]) -> alt.LayerChart | alt.FacetChart:
    """Bars for spans with a duration, points for the rest, labels staggered so close ones stay legible.

    The axis is seconds since the first mark (a call lasts seconds to minutes; "+2.4 s" reads
    faster than a clock time, and does not depend on the browser's time zone); tooltips give
    the UTC time of each mark.
    """
    origin = min(m.start for m in marks)
    rows: list[dict[str, Any]] = []
    seen_in_lane: dict[str, int] = {}
    for mark in marks:
        bar = mark.bar and mark.end > mark.start
        n = seen_in_lane.get(mark.lane, 0)
        seen_in_lane[mark.lane] = n + (0 if bar else 1)
        rows.append(
            {
                "lane": mark.lane,
                "label": mark.label,
                "t": (mark.start - origin).total_seconds(),
                "t_end": (mark.end - origin).total_seconds(),
                "at": f"{mark.start:%H:%M:%S.%f}"[:-3],
                "kind": mark.kind,
                "detail": mark.detail,
                "bar": bar,
                "tier": n % 3,
            }
        )
    data = pl.DataFrame(rows)
    lanes = [lane for lane in LANE_ORDER if lane in seen_in_lane] + sorted(
        set(seen_in_lane) - set(LANE_ORDER)
    )
    colour = alt.Color(
        "kind:N", scale=alt.Scale(domain=list(KIND_COLOURS), range=list(KIND_COLOURS.values())), legend=None
    )
    x = alt.X("t:Q", title=f"seconds since {origin:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC")
    y = alt.Y("lane:N", sort=lanes, title=None)
    tooltip = [
        alt.Tooltip("label:N"),
        alt.Tooltip("detail:N"),
        alt.Tooltip("at:N", title="UTC"),
        alt.Tooltip("t:Q", title="seconds", format=".3f"),
    ]
    base = alt.Chart(data)
    layers: list[alt.Chart] = [
        base.transform_filter("datum.bar")
        .mark_bar(height=16, opacity=0.6)
        .encode(x=x, x2="t_end:Q", y=y, color=colour, tooltip=tooltip),
        base.transform_filter("!datum.bar")
        .mark_point(filled=True, size=100, opacity=1)
        .encode(x=x, y=y, color=colour, shape=alt.Shape("kind:N", legend=None), tooltip=tooltip),
        base.transform_filter("datum.bar")
        .mark_text(align="left", dx=2, dy=-14, fontSize=11)
        .encode(x=x, y=y, text="label:N", color=colour),
    ]
    for tier in range(3):
        layers.append(
            base.transform_filter(f"!datum.bar && datum.tier == {tier}")
            .mark_text(align="left", dx=5, dy=-12 - 12 * tier, fontSize=11)
            .encode(x=x, y=y, text="label:N", color=colour)
        )
    return alt.layer(*layers).properties(height=60 + 90 * len(lanes))


links = st.columns([1, 1, 3])
trace_id = (call or {}).get("trace_id") or spans[0]["trace_id"]
links[0].link_button(
    "Open in Jaeger", f"{settings.jaeger_url}/trace/{trace_id}", icon=":material/open_in_new:"
)


@st.cache_data(ttl=30, show_spinner=False)
def trace_file(data_dir: str, call_id: str) -> str:
    """The OTLP JSON trace (as `callscope export-trace` writes it), made once per 30 s per call."""
    from pipeline.jaeger import trace_document

    return json.dumps(trace_document(data_dir, call_id, "otlp-json"), ensure_ascii=False, indent=1)


links[1].download_button(
    "Download trace",
    data=trace_file(str(settings.data_dir), call_id),
    file_name=f"{call_id}.otlp.json",
    mime="application/json",
    icon=":material/download:",
    help="OTLP JSON, as Jaeger UI's Upload JSON accepts it (root minivoice.call span included).",
    on_click="ignore",
)

st.subheader("Timeline")
marks = story.timeline_marks(spans)
if marks:
    st.altair_chart(timeline_chart(marks), width="stretch")
    st.caption(
        "One time axis. Bars: the answer_url request, the stream connection (open to close) and the call. "
        "Points: stream events, the disconnect (close code, who closed it) and each webhook. "
        "Red marks a problem."
    )
else:
    st.caption("No spans stored for this call.")

if events.height:
    with st.expander(f"Timeline events ({events.height})", expanded=False):
        st.dataframe(events.drop("call_id"), hide_index=True, key="events_table")

st.subheader("answer_url response")
response = story.answer_url_response(spans)
if response is None:
    st.caption(
        "No answer_url span: MiniVoice never called the answer_url, or its collector is not installed."
    )
else:
    meta = [f"HTTP {response.status_code}" if response.status_code is not None else "no HTTP status"]
    if response.truncated:
        meta.append("body truncated by the collector")
    st.caption(" · ".join(meta))
    for problem in response.problems:
        st.error(problem, icon=":material/block:")
    if response.lines:
        rows = []
        for line in response.lines:
            text = html.escape(line.text)
            if line.problems:
                notes = html.escape(" / ".join(line.problems))
                rows.append(
                    f'<div style="background:#fee2e2;border-left:4px solid #dc2626;padding-left:4px">'
                    f'{text}  <span style="color:#991b1b">← {notes}</span></div>'
                )
            else:
                rows.append(f'<div style="padding-left:8px">{text or "&nbsp;"}</div>')
        st.html(
            '<pre style="font-size:0.85rem;line-height:1.35;white-space:pre-wrap;margin:0">'
            + "".join(rows)
            + "</pre>"
        )
    elif not response.problems:
        st.caption("The response body was not recorded.")

st.subheader("Raw spans")
st.caption(f"{len(spans)} spans in trace `{trace_id}` (as stored).")
if spans:
    table = pl.DataFrame(
        {
            "source": [s.get("source") for s in spans],
            "name": [s.get("name") for s in spans],
            "status": [s.get("status_code") for s in spans],
            "start (UTC)": [story.span_time(int(s["start_ns"])) for s in spans],
            "duration_ms": [(int(s["end_ns"]) - int(s["start_ns"])) / 1e6 for s in spans],
            "span_id": [s.get("span_id") for s in spans],
            "service": [s.get("service_name") for s in spans],
        }
    )
    st.dataframe(table, hide_index=True, key="spans_table")
    for span in spans:
        with st.expander(f"{span.get('source') or '?'} · {span.get('name')} · {span.get('span_id')}"):
            st.json(
                {
                    "attributes": story.span_attributes(span),
                    "events": [
                        {
                            "time_ns": e["time_ns"],
                            "name": e["name"],
                            "attributes": json.loads(e["attributes"] or "{}"),
                        }
                        for e in span.get("events") or []
                    ],
                    "status": {"code": span.get("status_code"), "message": span.get("status_message")},
                },
                expanded=False,
            )
