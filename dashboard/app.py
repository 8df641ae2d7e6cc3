"""callscope's Streamlit entry point: `streamlit run dashboard/app.py` (or `callscope dashboard`).

A multipage app: Overview, Calls, Call detail, SQL. The data directory comes from CALLSCOPE_DATA.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import ui

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="callscope", page_icon=":material/call:", layout="wide")

OVERVIEW = st.Page(
    HERE / "screens" / "overview.py", title="Overview", icon=":material/monitoring:", default=True
)
CALLS = st.Page(HERE / "screens" / "calls.py", title="Calls", icon=":material/list:", url_path="calls")
PAGES = [
    OVERVIEW,
    CALLS,
    st.Page(
        HERE / "screens" / "call_detail.py", title="Call detail", icon=":material/timeline:", url_path="call"
    ),
    st.Page(HERE / "screens" / "sql.py", title="SQL", icon=":material/database:", url_path="sql"),
]
page = st.navigation(PAGES)
if page.title in (OVERVIEW.title, CALLS.title):
    # Drawn here, in the entry script, so that Overview and Calls share one set of filter widgets
    # (a widget on a page is that page's own) and a choice follows the person between them.
    ui.sidebar_filters(ui.filter_options(str(ui.settings().data_dir)))
page.run()
