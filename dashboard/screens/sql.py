"""SQL: read-only questions over the views, with examples, a result table and a CSV download."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import ui
from pipeline import dashboard_queries as q
from pipeline.sql import SQLError, SQLRefused, format_csv, run_query
from pipeline.storage import DataDir

MAX_ROWS = 10_000

settings = ui.settings()
st.title("SQL")
st.caption(
    "Read-only DuckDB SQL over the views `calls`, `call_events`, `spans`, `spans_raw` and "
    "`unattributed_spans`. Statements that write, ATTACH, COPY to a file or read files are refused."
)


def _use_example() -> None:
    name = st.session_state.get("sql_example")
    if name in q.EXAMPLE_QUERIES:
        st.session_state["sql_text"] = q.EXAMPLE_QUERIES[name]


st.selectbox(
    "Examples",
    list(q.EXAMPLE_QUERIES),
    index=None,
    key="sql_example",
    placeholder="Pick an example to start from",
    on_change=_use_example,
)
sql = st.text_area(
    "Query", key="sql_text", height=180, placeholder="SELECT verdict, count(*) FROM calls GROUP BY ALL"
)
if st.button("Run", type="primary", icon=":material/play_arrow:", key="sql_run"):
    st.session_state["sql_ran"] = sql

with st.expander("Views and their columns"), ui.connection() as con:
    for view in ("calls", "call_events", "spans", "spans_raw", "unattributed_spans"):
        names = q.columns(con, view)
        if names:
            st.markdown(f"**`{view}`**: " + ", ".join(f"`{c}`" for c in names))

ran = st.session_state.get("sql_ran")
if ran:
    try:
        result = run_query(DataDir(settings.data_dir), ran, max_rows=MAX_ROWS)
    except SQLRefused as exc:
        st.error(f"**Refused:** {exc}", icon=":material/block:")
    except SQLError as exc:
        st.error(f"**The query failed:** {exc}", icon=":material/error:")
    else:
        count = len(result.rows)
        st.caption(
            f"{count:,} {'row' if count == 1 else 'rows'}"
            + (
                f" (the first {MAX_ROWS:,}; use `callscope sql --format csv` for all)"
                if result.truncated
                else ""
            )
        )
        if result.columns:
            frame = pl.DataFrame(
                [list(row) for row in result.rows],
                schema=result.columns,
                orient="row",
                infer_schema_length=None,
            )
            st.dataframe(frame, hide_index=True, key="sql_result")
            st.download_button(
                "Download CSV",
                data=format_csv(result),
                file_name="callscope-query.csv",
                mime="text/csv",
                icon=":material/download:",
                on_click="ignore",
            )
