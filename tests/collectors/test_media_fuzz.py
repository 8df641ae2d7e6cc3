"""collectors.media under hypothesis: it never raises, and its fast path agrees with json.loads."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.media import StreamStats

FIXED_NS = 1_780_056_600_000_000_000

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = json_values | st.sampled_from(["media", "start", "stop", "connected", "inbound", "outbound"])
# Messages shaped like MiniVoice's, with any field possibly missing or of the wrong type.
message_like = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(["media", "start", "stop", "connected", "mark"]) | json_scalars,
        "sequence_number": st.integers(min_value=-2, max_value=10**20) | json_scalars,
        "media": st.fixed_dictionaries(
            {},
            optional={
                "track": st.sampled_from(["inbound", "outbound", "", "x" * 40]) | json_scalars,
                "chunk": st.integers() | json_scalars,
                "timestamp": st.integers() | st.floats(allow_nan=False) | json_scalars,
                "payload": st.text(alphabet=string.ascii_letters + "+/=", max_size=300) | json_scalars,
            },
        )
        | json_values,
        "start": st.fixed_dictionaries(
            {},
            optional={
                "call_id": json_scalars,
                "stream_id": json_scalars,
                "tracks": st.lists(field_values, max_size=10) | json_scalars,
                "media_format": st.dictionaries(
                    st.sampled_from(["encoding", "sample_rate", "channels"]), field_values
                )
                | json_scalars,
            },
        )
        | json_values,
        "stop": st.dictionaries(st.sampled_from(["reason", "call_id"]), field_values) | json_values,
        "protocol": json_scalars,
        "version": json_scalars,
    },
)
valid_media = st.builds(
    lambda sequence, track, chunk, timestamp, payload: {
        "event": "media",
        "sequence_number": sequence,
        "media": {"track": track, "chunk": chunk, "timestamp": timestamp, "payload": payload},
    },
    st.integers(min_value=0, max_value=10**18 - 1),
    st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=32),
    st.integers(min_value=0, max_value=10**18 - 1),
    st.integers(min_value=0, max_value=10**18 - 1),
    st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=400),
)


def fresh() -> StreamStats:
    return StreamStats(clock=lambda: FIXED_NS, max_message_chars=4096)


def check_invariants(stats: StreamStats, observed: int) -> None:
    assert stats.messages == observed
    assert stats.frames == sum(track.frames for track in stats.track_stats.values())
    assert stats.bytes == sum(track.bytes for track in stats.track_stats.values())
    assert stats.errors == sum(stats.error_types.values())
    assert stats.sequence_gaps >= 0
    attributes = stats.attributes()  # must not raise either
    assert attributes["minivoice.media.frames"] == stats.frames


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=200) | st.binary(max_size=200) | json_values, max_size=8))
def test_never_raises_on_anything(messages: list[Any]) -> None:
    stats = fresh()
    for message in messages:
        stats.observe(message)
    check_invariants(stats, len(messages))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message_like, max_size=8), st.booleans())
def test_never_raises_on_message_shaped_json(messages: list[dict[str, Any]], compact: bool) -> None:
    stats = fresh()
    separators = (",", ":") if compact else None
    for message in messages:
        stats.observe(json.dumps(message, separators=separators))
    check_invariants(stats, len(messages))


@settings(max_examples=300, deadline=None)
@given(valid_media, st.booleans())
def test_fast_path_agrees_with_the_parsed_message(message: dict[str, Any], compact: bool) -> None:
    text = json.dumps(message, separators=(",", ":") if compact else None)
    from_text, from_dict = fresh(), fresh()
    assert from_text.observe(text) == from_dict.observe_message(message)
    assert from_text.attributes() == from_dict.attributes()


@settings(max_examples=500, deadline=None)
@given(valid_media, st.data())
def test_a_damaged_frame_is_read_as_json_would_read_it(message: dict[str, Any], data: st.DataObject) -> None:
    """Whatever a byte of damage does to a canonical frame, the result equals json.loads' reading
    of it (an `invalid_json` error when json.loads refuses it)."""
    text = json.dumps(message)
    payload_at = text.index('"payload"')  # damage inside the payload as often as in the head
    index = data.draw(
        st.integers(min_value=0, max_value=payload_at - 1)
        | st.integers(min_value=payload_at, max_value=len(text) - 1)
    )
    # Control characters are left out: inside the payload, the fast path does not look for them
    # (a frame MiniVoice would never send; it is counted as media where json.loads refuses it).
    significant = st.sampled_from([*'\\"{}[],: -+.0123456789=eE', "\\/", "\\u0041", "é"])
    anything = st.characters(min_codepoint=32, max_codepoint=0x2FF)
    replacement = data.draw(st.lists(significant | anything, max_size=2).map("".join))
    damaged = text[:index] + replacement + text[index + 1 :]

    observed = fresh()
    observed.observe(damaged)
    expected = fresh()
    try:
        document = json.loads(damaged)
    except ValueError:
        expected.messages += 1
        expected.record_error("invalid_json", "")
    else:
        expected.observe_message(document)
    assert observed.attributes() == expected.attributes()
