"""The Streamlit triage dashboard (layout only; every query is a pipeline function).

`dashboard.launch(data_dir, port)` starts it as a subprocess; importing this package does not
import Streamlit.
"""

from dashboard.server import DashboardStartError, dashboard_url, launch, wait_until_ready

__all__ = ["DashboardStartError", "dashboard_url", "launch", "wait_until_ready"]
