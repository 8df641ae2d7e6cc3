"""callscope's Streamlit entry point: `streamlit run dashboard/app.py` (or `callscope dashboard`).

A multipage app: Overview, Calls, Call detail, SQL. The data directory comes from CALLSCOPE_DATA.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="callscope", page_icon=":material/call:", layout="wide")

PAGES = [
    st.Page(HERE / "screens" / "overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page(HERE / "screens" / "calls.py", title="Calls", icon=":material/list:", url_path="calls"),
    st.Page(
        HERE / "screens" / "call_detail.py", title="Call detail", icon=":material/timeline:", url_path="call"
    ),
    st.Page(HERE / "screens" / "sql.py", title="SQL", icon=":material/database:", url_path="sql"),
]
st.navigation(PAGES).run()
