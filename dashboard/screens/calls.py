"""Calls: a searchable, sortable table; each row opens the call's detail page (a shareable URL)."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from pipeline import dashboard_queries as q

settings = ui.settings()

flt, range_label = ui.current_filter(ui.now())

st.title("Calls")
search_col, sort_col = st.columns([3, 1])
text = search_col.text_input(
    "Search",
    key="calls_search",
    placeholder="call id, customer, application, verdict, or a phone number",
    help="Phone numbers are matched through their keyed hash (CALLSCOPE_PII_KEY), never stored in clear.",
)
sort = sort_col.selectbox("Sort", list(q.CALL_SORTS), key="calls_sort")

with ui.connection() as con:
    page = q.search_calls(con, flt, text, pii_key=settings.pii_key, sort=sort)

if page.note:
    st.warning(page.note, icon=":material/key:")
if page.total == 0:
    with ui.connection() as con:
        summary = q.data_summary(con)
    if summary.empty:
        st.info(ui.how_to_get_data(str(settings.data_dir)), icon=":material/info:")
    else:
        latest = f"{summary.last_seen:%Y-%m-%d %H:%M} UTC" if summary.last_seen else "unknown"
        st.info(
            f"No calls match in the {range_label.lower()}. Widen the time range or clear the filters "
            f"(the data directory holds {summary.calls:,} calls; the latest was first seen at {latest})."
        )
    st.stop()

shown = page.rows.height
st.caption(
    f"{page.total:,} {'call matches' if page.total == 1 else 'calls match'} in the {range_label.lower()}"
    + (f"; showing the first {shown:,}" if shown < page.total else "")
    + (" · matched by phone number (keyed hash)" if page.searched_phone else "")
    + ". Click a call id to open it (a link you can share), or select a row."
)

table = page.rows.with_columns(
    # A relative link: the page's URL path is `call`, so this works under any base URL.
    ("call?call_id=" + page.rows["call_id"]).alias("call_id")
)
event = st.dataframe(
    table,
    hide_index=True,
    height=600,
    key="calls_table",
    on_select="rerun",
    selection_mode="single-row",
    column_config={
        "call_id": st.column_config.LinkColumn("call", display_text=r"call\?call_id=(.*)", pinned=True),
        "first_seen_at": st.column_config.DatetimeColumn("first seen (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "failure_stage": st.column_config.TextColumn("stage"),
        "reason": st.column_config.TextColumn("reason", width="large"),
        "application_id": st.column_config.TextColumn("application"),
        "customer_id": st.column_config.TextColumn("customer"),
        "call_status": st.column_config.TextColumn("status"),
        "close_code": st.column_config.NumberColumn("close", format="%d"),
        "closed_by": st.column_config.TextColumn("closed by"),
        "media_frames": st.column_config.NumberColumn("frames", format="%d"),
    },
)
selected = event.selection.rows if event is not None else []
if selected:
    call_id = page.rows["call_id"][selected[0]]
    st.switch_page("screens/call_detail.py", query_params={"call_id": call_id})
