"""Overview: are streams failing, at which step, since when, and for whom."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import polars as pl
import streamlit as st

from dashboard import ui
from pipeline import dashboard_queries as q

settings = ui.settings()
every = ui.live_controls()

st.title("Overview")


@st.fragment(run_every=every)
def overview() -> None:
    """Everything below the title; re-runs on its own (with a moving window) when Live is on."""
    now = ui.now()
    flt, range_label = ui.current_filter(now)
    span = None if flt.start is None or flt.end is None else flt.end - flt.start
    bucket_label = st.session_state.get("bucket") or q.default_bucket(span)
    with ui.connection() as con:
        figures = q.overview(con, flt, dict(q.BUCKETS)[bucket_label])
        current = figures.kpis.current
        # Only an empty window needs to know whether the data directory is empty altogether.
        summary = q.data_summary(con) if current.calls == 0 else None
        orphans = q.spans_without_call_id(con)
    if summary is not None and summary.empty:
        st.info(ui.how_to_get_data(str(settings.data_dir)), icon=":material/info:")
        return
    kpis, steps, series = figures.kpis, figures.funnel, figures.series
    top_apps, top_customers = figures.top_applications, figures.top_customers

    st.caption(
        f"{range_label.lower()} · as of {now:%Y-%m-%d %H:%M:%S} UTC · data: `{settings.data_dir}`"
        + (" · live" if every else "")
    )
    if summary is not None:
        latest = f"{summary.last_seen:%Y-%m-%d %H:%M} UTC" if summary.last_seen else "unknown"
        st.warning(
            f"No calls in the {range_label.lower()} match these filters. "
            f"The data directory holds {summary.calls:,} calls; the latest was first seen at {latest}. "
            "Widen the time range or clear the filters in the sidebar.",
            icon=":material/search_off:",
        )
    st.markdown(figures.headline())

    cols = st.columns(4)
    delta = kpis.delta
    cols[0].metric("Calls", f"{current.calls:,}", _signed(delta("calls")), border=True)
    rate = current.failure_rate
    rate_delta = delta("failure_rate")
    cols[1].metric(
        "Failure rate",
        "–" if rate is None else f"{rate:.1%}",
        None if rate_delta is None else f"{rate_delta * 100:+.1f} pts",
        delta_color="inverse",
        border=True,
        help="Failures over final calls (calls still in progress are left out).",
    )
    cols[2].metric("Failures", f"{current.failures:,}", _signed(delta("failures")), "inverse", border=True)
    cols[3].metric(
        "In progress", f"{current.in_progress:,}", _signed(delta("in_progress")), "off", border=True
    )
    if kpis.previous is None:
        st.caption("Changes are against the previous window of the same length (none for all time).")
    if orphans:
        st.caption(
            f":material/warning: {orphans:,} stored spans carry no call id "
            "(query them on the SQL page: `SELECT * FROM spans WHERE call_id IS NULL`)."
        )

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Failures by verdict over time")
        st.segmented_control(
            "Bucket",
            [label for label, _ in q.BUCKETS],
            key="bucket",
            default=bucket_label,
            label_visibility="collapsed",
        )
        if series.height == 0:
            st.success("No failed calls in this window.", icon=":material/check_circle:")
        else:
            st.altair_chart(_failures_chart(series), width="stretch")
    with right:
        st.subheader("Where calls stop (debug order)")
        if steps[0].calls + steps[0].lost == 0:
            st.caption("No final calls that asked for a stream in this window.")
        else:
            st.altair_chart(_funnel_chart(steps), width="stretch")
            st.dataframe(
                pl.DataFrame(
                    {
                        "step": [s.step for s in steps],
                        "calls": [s.calls for s in steps],
                        "share": [s.share for s in steps],
                        "stopped here": [s.lost for s in steps],
                    }
                ),
                hide_index=True,
                column_config={"share": st.column_config.NumberColumn(format="percent")},
                key="funnel_table",
            )

    apps_col, customers_col = st.columns(2)
    with apps_col:
        st.subheader("Top applications by failures")
        _top_table(top_apps, "application_id")
    with customers_col:
        st.subheader("Top customers by failures")
        _top_table(top_customers, "customer_id")


def _signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+,.0f}"


def _failures_chart(series: pl.DataFrame) -> alt.Chart:
    verdicts = [v for v in ui.VERDICT_COLOURS if v in set(series["verdict"].to_list())]
    extra = sorted(set(series["verdict"].to_list()) - set(verdicts))
    domain = verdicts + extra
    colours = [ui.VERDICT_COLOURS.get(v, "#334155") for v in domain]
    # UTC, 24-hour labels: Vega-Lite's default is the browser's zone in 12-hour time without AM/PM
    # ("08:45" for 20:45 UTC), which misleads whoever reads it at night.
    buckets = series["bucket"].drop_nulls()
    one_day = buckets.is_empty() or (buckets.max() - buckets.min()) < timedelta(hours=20)
    label = "%H:%M" if one_day else "%b %d %H:%M"
    axis = alt.Axis(labelExpr=f"utcFormat(datum.value, '{label}')", labelOverlap=True)
    return (
        alt.Chart(series)
        .mark_bar()
        .encode(
            x=alt.X("bucket:T", title="UTC", scale=alt.Scale(type="utc"), axis=axis),
            y=alt.Y("sum(calls):Q", title="failed calls", stack="zero"),
            color=alt.Color(
                "verdict:N",
                scale=alt.Scale(domain=domain, range=colours),
                legend=alt.Legend(orient="bottom", columns=4, title=None),
            ),
            order=alt.Order("verdict:N"),
            tooltip=[
                alt.Tooltip("bucket:T", title="bucket (UTC)", format="%Y-%m-%d %H:%M", formatType="utc"),
                "verdict:N",
                "calls:Q",
            ],
        )
        .properties(height=280)
    )


def _funnel_chart(steps: list[q.FunnelStep]) -> alt.LayerChart:
    data = pl.DataFrame(
        {
            "step": [s.step for s in steps],
            "calls": [s.calls for s in steps],
            "label": [f"{s.calls:,} ({s.share:.0%})" for s in steps],
            "order": list(range(len(steps))),
        }
    )
    base = alt.Chart(data).encode(
        y=alt.Y("step:N", sort=alt.SortField("order"), title=None),
        x=alt.X("calls:Q", title="calls still on track"),
    )
    bars = base.mark_bar(color="#16a34a")
    text = base.mark_text(align="left", dx=4).encode(text="label:N")
    return (bars + text).properties(height=230)


def _top_table(top: pl.DataFrame, key: str) -> None:
    if top.height == 0:
        st.caption("No failures.")
        return
    st.dataframe(
        top,
        hide_index=True,
        column_config={
            key: st.column_config.TextColumn(key.removesuffix("_id")),
            "failure_rate": st.column_config.NumberColumn("failure rate", format="percent"),
            "top_verdict": st.column_config.TextColumn("top verdict"),
        },
        key=f"top_{key}",
    )


overview()
