"""Each dashboard page under Streamlit's AppTest, on a dataset built by the real pipeline.

Assertions are on what a person would read: the numbers, the verdicts, the reasons, the links.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from collectors.identity import call_trace_id_hex
from tests.dashboard.fixtures import FROM_NUMBER, PII_KEY, DemoData, demo_data

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TIMEOUT = 60


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return demo_data(tmp_path_factory)


@pytest.fixture
def app(demo: DemoData, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("CALLSCOPE_DATA", str(demo.data_dir))
    monkeypatch.setenv("CALLSCOPE_JAEGER_URL", "http://jaeger.example:16686")
    monkeypatch.delenv("CALLSCOPE_PII_KEY", raising=False)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _failed(row: dict[str, object]) -> bool:
    return bool(row["is_final"]) and row["failure_stage"] not in (None, "none")


def _table(at: AppTest, column: str) -> pd.DataFrame:
    """The first table shown that has `column` (read-only tables carry no key in AppTest)."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(
        f"no table with a {column!r} column; tables: {[list(f.value.columns) for f in at.dataframe]}"
    )


def _text(at: AppTest) -> str:
    parts = [e.value for e in (*at.markdown, *at.caption, *at.info, *at.warning, *at.error, *at.success)]
    return "\n".join(str(p) for p in parts)


def test_overview_shows_the_answer_in_one_look(app: AppTest, demo: DemoData) -> None:
    at = _ok(app.run())
    rows = list(demo.rows.values())
    failures = sum(1 for r in rows if _failed(r))
    final = sum(1 for r in rows if r["is_final"])
    metrics = _metrics(at)
    assert metrics["Calls"] == str(len(rows))
    assert metrics["Failures"] == str(failures)
    assert metrics["Failure rate"] == f"{failures / final:.1%}"
    assert metrics["In progress"] == str(sum(1 for r in rows if not r["is_final"]))
    # The change against the previous (empty) window is the whole figure.
    assert {m.label: m.delta for m in at.metric}["Calls"] == f"+{len(rows)}"

    stage_counts = Counter(r["failure_stage"] for r in rows if _failed(r))
    verdict_counts = Counter(r["verdict"] for r in rows if _failed(r))
    _, top_n = verdict_counts.most_common(1)[0]
    headline = at.markdown[0].value
    assert f"{failures} of {final} final calls failed" in headline
    assert f"({top_n} calls), since **" in headline  # since when: the top verdict's latest burst
    assert any(f"**{stage}**" in headline for stage in stage_counts)

    funnel = _table(at, "stopped here")
    assert list(funnel["step"]) == [
        "answered",
        "valid action",
        "connected",
        "media flowing",
        "clean end",
        "completed",
    ]
    assert int(funnel["calls"].iloc[-1]) == sum(1 for r in rows if r["verdict"] == "ok")
    assert int(funnel["stopped here"].sum()) == sum(
        1 for r in rows if _failed(r) and r["verdict"] != "no_stream"
    )

    apps = _table(at, "application_id")
    app_failures = Counter(r["application_id"] for r in rows if _failed(r))
    assert dict(zip(apps["application_id"], apps["failures"], strict=True)) == dict(app_failures)
    customers = _table(at, "customer_id")
    assert int(customers["failures"].sum()) == failures


def test_overview_sidebar_filter_by_verdict(app: AppTest, demo: DemoData) -> None:
    at = _ok(app.run())
    at.multiselect(key="f_verdicts").select("stream_dropped").run()
    _ok(at)
    dropped = sum(1 for r in demo.rows.values() if r["verdict"] == "stream_dropped")
    assert _metrics(at)["Calls"] == str(dropped)
    assert _metrics(at)["Failure rate"] == "100.0%"
    assert "`stream_dropped`" in at.markdown[0].value
    # The filter follows the person to the Calls page.
    at.switch_page("screens/calls.py").run()
    _ok(at)
    assert set(at.dataframe(key="calls_table").value["verdict"]) == {"stream_dropped"}


def test_overview_time_range_and_live_toggle(app: AppTest, demo: DemoData) -> None:
    at = _ok(app.run())
    at.selectbox(key="f_range").select("All time").run()
    _ok(at)
    assert _metrics(at)["Calls"] == str(len(demo.rows))
    assert "all time" in _text(at)
    at.toggle(key="f_live").set_value(True).run()
    _ok(at)
    assert "live" in _text(at)


def test_overview_of_an_empty_data_dir_says_how_to_get_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLSCOPE_DATA", str(tmp_path / "nothing-yet"))
    at = _ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    info = "\n".join(i.value for i in at.info)
    assert "No calls in" in info
    assert "callscope demo --data" in info and "callscope build" in info
    assert not at.metric  # no KPIs to show
    assert not at.error


def test_calls_page_search_and_link(app: AppTest, demo: DemoData) -> None:
    at = _ok(app.run())
    at.switch_page("screens/calls.py").run()
    _ok(at)
    table = at.dataframe(key="calls_table").value
    assert len(table) == len(demo.rows)
    assert f"{len(demo.rows)} calls match" in _text(at)
    # Failures first.
    assert table["failure_stage"].iloc[0] != "none"

    call_id = demo.call("receiver_closes_early")
    at.text_input(key="calls_search").input(call_id).run()
    _ok(at)
    table = at.dataframe(key="calls_table").value
    assert list(table["call_id"]) == [f"call?call_id={call_id}"]  # a shareable link to the detail page
    assert list(table["verdict"]) == ["stream_dropped"]
    assert "1 call matches" in _text(at)

    at.text_input(key="calls_search").input("invalid_action").run()
    assert set(_ok(at).dataframe(key="calls_table").value["verdict"]) == {"invalid_action"}

    at.text_input(key="calls_search").input("nothing-like-this").run()
    assert "No calls match" in _text(_ok(at))


def test_calls_page_phone_search_needs_the_key(
    app: AppTest, demo: DemoData, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _ok(app.run())
    at.switch_page("screens/calls.py").run()
    at.text_input(key="calls_search").input(FROM_NUMBER).run()
    _ok(at)
    assert any("CALLSCOPE_PII_KEY" in w.value for w in at.warning)

    monkeypatch.setenv("CALLSCOPE_PII_KEY", PII_KEY)
    at.run()
    _ok(at)
    assert len(at.dataframe(key="calls_table").value) == len(demo.rows)
    assert "matched by phone number" in _text(at)


def _detail(app: AppTest, call_id: str) -> AppTest:
    at = _ok(app.run())
    at.query_params["call_id"] = call_id
    at.switch_page("screens/call_detail.py").run()
    return _ok(at)


def test_call_detail_banner_next_step_and_response(app: AppTest, demo: DemoData) -> None:
    call_id = demo.call("invalid_track")
    row = demo.row("invalid_track")
    at = _detail(app, call_id)
    banner = at.error[0].value
    assert "invalid_action" in banner and "failed at **action**" in banner
    assert f"**Next step:** {row['next_step']}" in banner
    assert str(row["reason"]) in banner
    assert banner.index("Next step") < banner.index("Why")  # the next step first
    # The answer_url response, with the offending line highlighted and the objection next to it.
    html = "\n".join(h.value for h in at.html)
    assert "&quot;track&quot;: &quot;speaker&quot;" in html
    assert "#fee2e2" in html  # the highlight
    assert "inbound, outbound or both" in html
    links = {b.proto.label: b.proto.url for b in at.link_button}
    assert links["Open in Jaeger"] == f"http://jaeger.example:16686/trace/{call_trace_id_hex(call_id)}"
    assert [b.label for b in at.download_button] == ["Download trace"]
    spans = _table(at, "span_id")
    assert {"answer_url", "webhook"} <= set(spans["source"])


def test_call_detail_of_a_dropped_stream(app: AppTest, demo: DemoData) -> None:
    row = demo.row("network_drop")
    at = _detail(app, demo.call("network_drop"))
    banner = at.error[0].value
    assert "stream_dropped" in banner and str(row["next_step"]) in banner
    shown = [m.value for m in at.markdown]
    assert "**1006**" in shown and "**connected**" in shown
    assert "by network" in [c.value for c in at.caption]
    assert f"**{row['call_status']}**" in shown


def test_call_detail_ok_call_and_clock_skew(app: AppTest, demo: DemoData) -> None:
    at = _detail(app, demo.call("skewed_receiver_clock"))
    assert at.success and "ok" in at.success[0].value
    assert not at.error
    assert any("clock" in w.value and "NTP" in w.value for w in at.warning)
    at = _detail(AppTest.from_file(APP, default_timeout=TIMEOUT), demo.call("happy"))
    assert not any("NTP" in w.value for w in at.warning)


def test_call_detail_unknown_call_and_no_call(app: AppTest, demo: DemoData) -> None:
    at = _detail(app, "call_that_never_happened")
    assert any("Nothing is stored about call `call_that_never_happened`" in w.value for w in at.warning)
    cut_short = demo.call("happy")[:-2]  # a cut-off paste
    at = _detail(AppTest.from_file(APP, default_timeout=TIMEOUT), cut_short)
    assert any("Did you mean" in m.value and demo.call("happy") in m.value for m in at.markdown)
    at = _ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    at.switch_page("screens/call_detail.py").run()
    assert "Enter a call id" in _ok(at).info[0].value


def _sql(app: AppTest) -> AppTest:
    at = _ok(app.run())
    at.switch_page("screens/sql.py").run()
    return _ok(at)


def test_sql_page_runs_an_example(app: AppTest, demo: DemoData) -> None:
    at = _sql(app)
    at.selectbox(key="sql_example").select("Failure rate by application").run()
    assert "FROM calls" in at.text_area(key="sql_text").value
    at.button(key="sql_run").click().run()
    _ok(at)
    result = _table(at, "failure_rate_pct")
    rows = list(demo.rows.values())
    assert int(result["failures"].sum()) == sum(1 for r in rows if _failed(r))
    assert int(result["final_calls"].sum()) == sum(1 for r in rows if r["is_final"])
    assert [b.label for b in at.download_button] == ["Download CSV"]
    assert any(c.value.startswith(f"{len(result)} row") for c in at.caption)


def test_sql_page_free_query(app: AppTest, demo: DemoData) -> None:
    at = _sql(app)
    at.text_area(key="sql_text").input("SELECT call_id, verdict FROM calls WHERE verdict = 'no_media'").run()
    at.button(key="sql_run").click().run()
    result = _table(_ok(at), "verdict")
    assert list(result["call_id"]) == [demo.call("no_media")]


@pytest.mark.parametrize(
    ("statement", "why"),
    [
        ("CREATE TABLE stolen AS SELECT * FROM calls", "CREATE statements are not allowed"),
        ("INSERT INTO calls (call_id) VALUES ('x')", "INSERT statements are not allowed"),
        ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH statements are not allowed"),
        ("COPY calls TO '/tmp/calls.csv'", "COPY statements are not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "only the data directory's views may be read"),
        ("SELECT 1; DROP VIEW calls", "one statement at a time"),
    ],
)
def test_sql_page_refuses_anything_but_reading_the_views(app: AppTest, statement: str, why: str) -> None:
    at = _sql(app)
    at.text_area(key="sql_text").input(statement).run()
    at.button(key="sql_run").click().run()
    _ok(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("**Refused:**") and why in errors[0], errors
    assert not at.dataframe  # nothing ran
    assert not Path("/tmp/calls.csv").exists()


def test_sql_page_reports_a_bad_query(app: AppTest) -> None:
    at = _sql(app)
    at.text_area(key="sql_text").input("SELECT no_such_column FROM calls").run()
    at.button(key="sql_run").click().run()
    errors = [e.value for e in _ok(at).error]
    assert errors and "The query failed" in errors[0] and "no_such_column" in errors[0]


def test_an_unreadable_data_dir_is_a_plain_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.storage import DataDir

    data = DataDir(tmp_path / "data")
    (data.table_dir("calls") / "base-000001.parquet").write_bytes(b"not parquet at all")  # truncated
    monkeypatch.setenv("CALLSCOPE_DATA", str(data.path))
    at = _ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    errors = [e.value for e in at.error]
    assert errors and "Could not read the data directory" in errors[0]
    assert "reload in a few seconds" in errors[0]
