"""Action validation, the way MiniVoice validates the answer_url response."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from callscope.cli import app
from collectors import validate_actions

SEED_FAILURE = """{
"actions": [
{
"type": "start_stream",
"stream_url": "https://media.example.com/minivoice",
"track": "speaker"
}
]
}"""
SEED_REQUEST = """{"actions": [{"type": "start_stream",
"stream_url": "wss://media.example.com/minivoice", "track": "both"}]}"""


def codes(body: object) -> list[str]:
    return [problem.code for problem in validate_actions(body)]


def test_seed_failure_case_has_exactly_the_two_problems_it_describes() -> None:
    problems = validate_actions(SEED_FAILURE)
    assert [(p.code, p.index, p.field) for p in problems] == [
        ("stream_url_not_wss", 0, "stream_url"),
        ("invalid_track", 0, "track"),
    ]
    assert "stream_url scheme is https; MiniVoice requires wss" in problems[0].message
    assert "speaker" in problems[1].message


def test_seed_request_and_stop_example_are_valid() -> None:
    assert validate_actions(SEED_REQUEST) == []
    assert validate_actions(SEED_REQUEST.replace("start_stream", "stop_stream").encode()) == []


def test_each_code() -> None:
    assert codes(b"\xff\xfe") == ["not_json"]
    assert codes("<html>") == ["not_json"]
    assert codes("[]") == ["not_an_object"]
    assert codes("{}") == ["no_actions"]
    assert codes({"actions": []}) == ["no_actions"]
    assert codes({"actions": {"type": "start_stream"}}) == ["actions_not_a_list"]
    assert codes({"actions": [7]}) == ["action_not_an_object"]
    assert codes({"actions": [{"stream_url": "wss://a/b", "track": "both"}]}) == ["missing_type"]
    assert codes({"actions": [{"type": "play", "stream_url": "wss://a", "track": "both"}]}) == [
        "unknown_action_type"
    ]
    assert codes({"actions": [{"type": "start_stream", "track": "both"}]}) == ["missing_stream_url"]
    assert codes({"actions": [{"type": "start_stream", "stream_url": "media/x", "track": "both"}]}) == [
        "stream_url_malformed"
    ]
    assert codes(
        {"actions": [{"type": "start_stream", "stream_url": "wss://h:99999/", "track": "both"}]}
    ) == ["stream_url_malformed"]
    assert codes({"actions": [{"type": "start_stream", "stream_url": 5, "track": "both"}]}) == [
        "stream_url_malformed"
    ]
    assert codes({"actions": [{"type": "start_stream", "stream_url": "ws://a/b", "track": "both"}]}) == [
        "stream_url_not_wss"
    ]
    assert codes({"actions": [{"type": "start_stream", "stream_url": "wss://a/b"}]}) == ["missing_track"]
    assert codes({"actions": [{"type": "start_stream", "stream_url": "wss://a/b", "track": 1}]}) == [
        "invalid_track"
    ]


def test_problems_are_reported_per_action_in_order() -> None:
    body = {"actions": [{"type": "start_stream", "stream_url": "wss://a/b", "track": "both"}, {"type": "x"}]}
    assert [(p.code, p.index) for p in validate_actions(body)] == [("unknown_action_type", 1)]


def test_uppercase_scheme_is_accepted() -> None:
    assert codes({"actions": [{"type": "start_stream", "stream_url": "WSS://a/b", "track": "both"}]}) == []


def test_deep_nesting_does_not_raise() -> None:
    assert codes("[" * 200_000) == ["not_json"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(), st.text(), json_values, json_values.map(json.dumps)))
def test_never_raises(body: object) -> None:
    problems = validate_actions(body)
    assert all(p.code and p.message for p in problems)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["start_stream", "stop_stream", "x"]),
            "stream_url": st.text(),
            "track": st.text(),
        }
    )
)
def test_structured_actions_never_raise(action: dict[str, str]) -> None:
    validate_actions({"actions": [action]})


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text(SEED_FAILURE)
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "stream_url_not_wss" in result.output and "invalid_track" in result.output
    result = runner.invoke(app, ["validate", "-"], input=SEED_REQUEST)
    assert result.exit_code == 0
    assert "stream action accepted by the call flow" in result.output
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "cannot read" in result.output
