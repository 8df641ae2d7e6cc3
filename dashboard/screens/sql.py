"""SQL: read-only queries over the views (placeholder until pipeline.sql lands)."""

from __future__ import annotations

import streamlit as st

st.title("SQL")
