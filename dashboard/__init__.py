"""The Streamlit triage dashboard (layout only; every query is a pipeline function)."""
