"""The answer_url action schema, validated the way MiniVoice validates it.

From the MiniVoice troubleshooting page: streaming is controlled by JSON actions returned
from answer_url; MiniVoice validates the payload before executing it; `start_stream` requires
a secure `wss` URL; `track` may be `inbound`, `outbound` or `both`.

Everything here is pure and total: `check_actions` and `validate_actions` never raise,
whatever they are given. The simulator uses the same code, so "valid" means one thing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ACTION_TYPES = ("start_stream", "stop_stream")
TRACKS = ("inbound", "outbound", "both")
ACCEPTED_RESULT = "stream action accepted by the call flow"


@dataclass(frozen=True, slots=True)
class ActionProblem:
    """One reason MiniVoice would refuse the answer_url response.

    `code` is stable and machine-readable; `index` is the position of the action in
    `actions` (None for problems with the whole body); `field` names the offending key.
    """

    code: str
    message: str
    index: int | None = None
    field: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "index": self.index, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class ActionCheck:
    """The outcome of reading an answer_url response body."""

    is_json: bool
    actions: tuple[Mapping[str, Any], ...] = ()
    problems: tuple[ActionProblem, ...] = ()
    action_types: tuple[str, ...] = field(default=())

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def start_stream(self) -> Mapping[str, Any] | None:
        """The first `start_stream` action, if any (valid or not)."""
        for action in self.actions:
            if action.get("type") == "start_stream":
                return action
        return None


def _describe(value: object) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return json.dumps(shown)
    if value is None:
        return "null"
    return type(value).__name__


def _check_stream_url(index: int, value: object) -> list[ActionProblem]:
    if value is None or value == "":
        return [
            ActionProblem(
                "missing_stream_url",
                f'action {index} has no stream_url; add "stream_url": "wss://your-receiver/..."',
                index,
                "stream_url",
            )
        ]
    if not isinstance(value, str):
        return [
            ActionProblem(
                "stream_url_malformed",
                f"action {index} stream_url is a {type(value).__name__}, not a string; "
                'give the receiver\'s URL as a string such as "wss://media.example.com/minivoice"',
                index,
                "stream_url",
            )
        ]
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        parts, host = None, None
    if parts is None or not parts.scheme or not host:
        return [
            ActionProblem(
                "stream_url_malformed",
                f"action {index} stream_url is not an absolute URL with a host; "
                'use the form "wss://media.example.com/minivoice"',
                index,
                "stream_url",
            )
        ]
    scheme = parts.scheme.lower()
    if scheme != "wss":
        return [
            ActionProblem(
                "stream_url_not_wss",
                f"stream_url scheme is {scheme}; MiniVoice requires wss. "
                f"Serve the receiver over TLS and change the URL to wss://{host}{parts.path}",
                index,
                "stream_url",
            )
        ]
    return []


def _check_track(index: int, action: Mapping[str, Any]) -> list[ActionProblem]:
    if "track" not in action or action["track"] is None or action["track"] == "":
        return [
            ActionProblem(
                "missing_track",
                f'action {index} has no track; set "track" to one of inbound, outbound, both',
                index,
                "track",
            )
        ]
    track = action["track"]
    if track not in TRACKS:
        return [
            ActionProblem(
                "invalid_track",
                f"track is {_describe(track)}; MiniVoice accepts inbound, outbound or both",
                index,
                "track",
            )
        ]
    return []


def _check_action(index: int, action: object) -> list[ActionProblem]:
    if not isinstance(action, Mapping):
        return [
            ActionProblem(
                "action_not_an_object",
                f"action {index} is {_describe(action)}, not an object; "
                'each action is {"type": ..., "stream_url": ..., "track": ...}',
                index,
            )
        ]
    action_type = action.get("type")
    if action_type is None or action_type == "":
        return [
            ActionProblem(
                "missing_type",
                f'action {index} has no type; use "start_stream" or "stop_stream"',
                index,
                "type",
            )
        ]
    if action_type not in ACTION_TYPES:
        return [
            ActionProblem(
                "unknown_action_type",
                f"action {index} type is {_describe(action_type)}; "
                "MiniVoice knows start_stream and stop_stream",
                index,
                "type",
            )
        ]
    return _check_stream_url(index, action.get("stream_url")) + _check_track(index, action)


def _decode(body: bytes | str | object) -> tuple[bool, object]:
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return False, None
    if isinstance(body, str):
        try:
            return True, json.loads(body)
        except (ValueError, RecursionError):
            return False, None
    return True, body


def check_actions(body: bytes | str | object) -> ActionCheck:
    """Read an answer_url response body (raw bytes, text, or already-parsed JSON).

    Returns every problem MiniVoice would report, in document order. Never raises.
    """
    try:
        return _check(body)
    except Exception as exc:
        return ActionCheck(
            is_json=False,
            problems=(ActionProblem("not_json", f"the body could not be read ({type(exc).__name__})"),),
        )


def _check(body: bytes | str | object) -> ActionCheck:
    is_json, document = _decode(body)
    if not is_json:
        return ActionCheck(
            is_json=False,
            problems=(
                ActionProblem(
                    "not_json",
                    "the answer_url response is not JSON; return "
                    '{"actions": [...]} with Content-Type: application/json',
                ),
            ),
        )
    if not isinstance(document, Mapping):
        return ActionCheck(
            is_json=True,
            problems=(
                ActionProblem(
                    "not_an_object",
                    f"the response is {_describe(document)}; MiniVoice expects an object "
                    '{"actions": [...]}',
                ),
            ),
        )
    actions = document.get("actions")
    if actions is None or (isinstance(actions, list) and not actions):
        return ActionCheck(
            is_json=True,
            problems=(
                ActionProblem(
                    "no_actions",
                    'the response has no actions; return {"actions": [{"type": "start_stream", ...}]}',
                    field="actions",
                ),
            ),
        )
    if not isinstance(actions, list):
        return ActionCheck(
            is_json=True,
            problems=(
                ActionProblem(
                    "actions_not_a_list",
                    f"actions is {_describe(actions)}; it must be a list of action objects",
                    field="actions",
                ),
            ),
        )
    problems: list[ActionProblem] = []
    for index, action in enumerate(actions):
        problems.extend(_check_action(index, action))
    objects = tuple(a for a in actions if isinstance(a, Mapping))
    types = tuple(str(a.get("type")) for a in objects if isinstance(a.get("type"), str))
    return ActionCheck(is_json=True, actions=objects, problems=tuple(problems), action_types=types)


def validate_actions(body: bytes | str | object) -> list[ActionProblem]:
    """Every problem MiniVoice would report for this answer_url response body. Never raises."""
    return list(check_actions(body).problems)
