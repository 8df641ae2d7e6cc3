"""collectors.media: the MiniVoice stream parser and counters, pure (no sockets here)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from collectors.media import MAX_ERROR_NOTICES, Notice, StreamStats, base64_decoded_size

CALL_ID = "call_123"


def ticking_clock(start: int = 1_780_056_600_000_000_000, step: int = 1_000_000) -> Any:
    """A clock that advances `step` ns per reading, so every notice has its own time."""
    state = {"now": start - step}

    def clock() -> int:
        state["now"] += step
        return state["now"]

    return clock


def connected() -> dict[str, Any]:
    return {"event": "connected", "protocol": "minivoice.stream", "version": "1"}


def start(sequence: int = 1, call_id: str = CALL_ID) -> dict[str, Any]:
    return {
        "event": "start",
        "sequence_number": sequence,
        "start": {
            "call_id": call_id,
            "stream_id": "str_9f2c",
            "tracks": ["inbound", "outbound"],
            "media_format": {"encoding": "audio/x-mulaw", "sample_rate": 8000, "channels": 1},
        },
    }


def media(sequence: int, track: str, chunk: int, timestamp: int, size: int = 160) -> dict[str, Any]:
    payload = base64.b64encode(bytes(range(256))[:size] if size <= 256 else b"\x7f" * size).decode()
    return {
        "event": "media",
        "sequence_number": sequence,
        "media": {"track": track, "chunk": chunk, "timestamp": timestamp, "payload": payload},
    }


def stop(sequence: int, reason: str = "stop_stream") -> dict[str, Any]:
    return {"event": "stop", "sequence_number": sequence, "stop": {"call_id": CALL_ID, "reason": reason}}


def call_messages(frames_per_track: int = 5) -> Iterator[dict[str, Any]]:
    """connected, start, interleaved inbound/outbound media 20 ms apart, stop."""
    yield connected()
    yield start()
    sequence = 1
    for chunk in range(1, frames_per_track + 1):
        for track in ("inbound", "outbound"):
            sequence += 1
            yield media(sequence, track, chunk, (chunk - 1) * 20)
    yield stop(sequence + 1)


def feed(stats: StreamStats, messages: Iterator[dict[str, Any]], **dumps: Any) -> list[Notice]:
    notices = []
    for message in messages:
        notice = stats.observe(json.dumps(message, **dumps))
        if notice is not None:
            notices.append(notice)
    return notices


def test_a_whole_stream_adds_up() -> None:
    stats = StreamStats(clock=ticking_clock())
    notices = feed(stats, call_messages(frames_per_track=5))

    assert [n.event for n in notices] == ["connected", "start", "first_media", "stop"]
    assert notices[1].attributes == {
        "minivoice.call_id": CALL_ID,
        "minivoice.stream_id": "str_9f2c",
        "minivoice.stream.tracks": ["inbound", "outbound"],
        "minivoice.media.encoding": "audio/x-mulaw",
        "minivoice.media.sample_rate": 8000,
        "minivoice.media.channels": 1,
    }
    assert notices[2].attributes == {
        "minivoice.media.track": "inbound",
        "minivoice.media.timestamp_ms": 0,
        "minivoice.media.chunk": 1,
    }
    assert notices[3].attributes == {"minivoice.stop.reason": "stop_stream"}
    assert notices[0].at_ns < notices[1].at_ns < notices[2].at_ns < notices[3].at_ns

    attributes = stats.attributes()
    assert attributes["minivoice.messages"] == 13
    assert attributes["minivoice.media.frames"] == 10
    assert attributes["minivoice.media.bytes"] == 1600
    assert attributes["minivoice.media.inbound.frames"] == 5
    assert attributes["minivoice.media.inbound.bytes"] == 800
    assert attributes["minivoice.media.outbound.frames"] == 5
    assert attributes["minivoice.media.sequence_gaps"] == 0
    assert attributes["minivoice.media.out_of_order"] == 0
    assert attributes["minivoice.media.gap_max_ms"] == 20
    assert attributes["minivoice.media.first_timestamp_ms"] == 0
    assert attributes["minivoice.media.last_timestamp_ms"] == 80
    assert attributes["minivoice.stop.reason"] == "stop_stream"
    assert attributes["minivoice.errors"] == 0
    assert stats.call_id == CALL_ID
    assert attributes["minivoice.media.first_at_unix_nano"] == notices[2].at_ns
    assert attributes["minivoice.media.last_at_unix_nano"] < notices[3].at_ns


@pytest.mark.parametrize(
    "dumps",
    [
        pytest.param({}, id="json.dumps default (spaced)"),
        pytest.param({"separators": (",", ":")}, id="compact"),
        pytest.param({"indent": 1}, id="indented: general path"),
        pytest.param({"sort_keys": True}, id="other key order: general path"),
    ],
)
def test_every_layout_counts_the_same(dumps: dict[str, Any]) -> None:
    reference = StreamStats(clock=ticking_clock())
    for message in call_messages(7):
        reference.observe_message(message)
    stats = StreamStats(clock=ticking_clock())
    feed(stats, call_messages(7), **dumps)
    assert stats.attributes() == reference.attributes()


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 159, 160, 161, 320])
def test_bytes_come_from_the_base64_length_without_decoding(size: int) -> None:
    payload = base64.b64encode(b"\x00" * size).decode()
    assert base64_decoded_size(len(payload), len(payload) - len(payload.rstrip("="))) == size
    unpadded = payload.rstrip("=")
    assert base64_decoded_size(len(unpadded), 0) == size
    for dumps in ({}, {"separators": (",", ":")}, {"sort_keys": True}):
        stats = StreamStats()
        stats.observe(json.dumps(media(2, "inbound", 1, 0, size), **dumps))
        assert stats.bytes == size, dumps


def test_sequence_gaps_and_out_of_order_frames() -> None:
    stats = StreamStats()
    for sequence in (1, 2, 3, 6, 7, 5, 10):  # 4, 8, 9 never come; 5 comes late
        stats.observe(json.dumps(media(sequence, "inbound", sequence, sequence * 20)))
    assert stats.sequence_gaps == 3
    assert stats.out_of_order == 1
    # A late frame that arrives below the first one seen still fills the range.
    late = StreamStats()
    for sequence in (5, 6, 3, 4):
        late.observe(json.dumps(media(sequence, "inbound", sequence, sequence * 20)))
    assert (late.sequence_gaps, late.out_of_order) == (0, 2)


def test_gap_max_is_per_track_so_interleaving_is_not_a_gap() -> None:
    stats = StreamStats()
    frames = [("inbound", 0), ("outbound", 0), ("inbound", 20), ("outbound", 20), ("inbound", 40)]
    frames += [("outbound", 1540), ("inbound", 60)]  # outbound silent for 1.5 s (silence skipped)
    for sequence, (track, timestamp) in enumerate(frames, start=2):
        stats.observe(json.dumps(media(sequence, track, sequence, timestamp)))
    assert stats.track_stats["inbound"].gap_max_ms == 20
    assert stats.track_stats["outbound"].gap_max_ms == 1520
    assert stats.attributes()["minivoice.media.gap_max_ms"] == 1520


def test_an_announced_track_that_never_sent_media_shows_as_zero() -> None:
    stats = StreamStats()
    stats.observe(json.dumps(start()))
    stats.observe(json.dumps(media(2, "inbound", 1, 0)))
    attributes = stats.attributes()
    assert attributes["minivoice.media.inbound.frames"] == 1
    assert attributes["minivoice.media.outbound.frames"] == 0
    assert attributes["minivoice.media.outbound.bytes"] == 0


@pytest.mark.parametrize(
    ("message", "error_type", "in_message"),
    [
        (b"\x00\x01binary audio", "binary_frame", "binary message of 14 bytes"),
        ("not json{", "invalid_json", "not JSON"),
        ("[1, 2]", "invalid_message", "a JSON list, not an object"),
        ('{"event": 5}', "invalid_message", '"event" is int'),
        ('{"event": "mark", "mark": {}}', "unexpected_event", "unknown event 'mark'"),
        ('{"event": "media", "sequence_number": 2, "media": "x"}', "invalid_message", '"media" is str'),
        (
            '{"event": "media", "sequence_number": 2, "media": {"track": "inbound", "timestamp": "0", '
            '"payload": ""}}',
            "invalid_message",
            "\"timestamp\" is '0'",
        ),
        (
            '{"event": "media", "sequence_number": 2, "media": {"track": "inbound", "timestamp": 0}}',
            "invalid_message",
            '"payload" is null',
        ),
        ('{"event": "media", "sequence_number": -1, "media": {}}', "invalid_message", "non-negative"),
        ('{"event": "start", "start": null}', "invalid_message", '"start" is null'),
    ],
)
def test_bad_messages_are_recorded_errors_not_exceptions(
    message: str | bytes, error_type: str, in_message: str
) -> None:
    stats = StreamStats()
    notice = stats.observe(message)
    assert notice is not None
    assert notice.event == "error"
    assert notice.attributes["error.type"] == error_type
    assert in_message in str(notice.attributes["error.message"])
    assert stats.errors == 1
    assert stats.frames == 0
    assert stats.attributes()["minivoice.error.types"] == [error_type]


def test_a_huge_frame_is_not_parsed() -> None:
    stats = StreamStats(max_message_chars=64 * 1024)
    huge = json.dumps(media(2, "inbound", 1, 0, size=12 * 1024 * 1024))  # 16 MB of base64
    notice = stats.observe(huge)
    assert notice is not None
    assert notice.attributes["error.type"] == "frame_too_large"
    assert stats.frames == 0
    assert stats.observe(huge.encode()) is not None  # as a binary frame: also refused unparsed
    assert stats.error_types == {"frame_too_large": 1, "binary_frame": 1}


def test_second_start_and_stop_are_unexpected() -> None:
    stats = StreamStats()
    stats.observe(json.dumps(start(call_id="call_first")))
    notice = stats.observe(json.dumps(start(sequence=2, call_id="call_second")))
    assert notice is not None and notice.attributes["error.type"] == "unexpected_event"
    assert stats.call_id == "call_first"
    stats.observe(json.dumps(stop(3)))
    notice = stats.observe(json.dumps(stop(4, reason="call_ended")))
    assert notice is not None and notice.attributes["error.type"] == "unexpected_event"
    assert stats.stop_reason == "stop_stream"


def test_error_notices_are_capped_but_every_error_is_counted() -> None:
    stats = StreamStats()
    notices = [stats.observe("garbage") for _ in range(MAX_ERROR_NOTICES + 30)]
    assert sum(n is not None for n in notices) == MAX_ERROR_NOTICES
    assert stats.errors == MAX_ERROR_NOTICES + 30


def test_payloads_never_reach_notices_or_attributes() -> None:
    stats = StreamStats()
    notices = feed(stats, call_messages(3))
    payload = media(2, "inbound", 1, 0)["media"]["payload"]
    assert payload not in json.dumps([n.attributes for n in notices] + [stats.attributes()])


def test_odd_track_names_are_bounded() -> None:
    stats = StreamStats()
    for index in range(20):
        stats.observe_message(media(index + 2, f"track{index}", 1, 0))
    stats.observe_message(media(30, "in.bound", 1, 0))
    assert len(stats.track_stats) == 9  # MAX_TRACKS plus `other`
    assert stats.track_stats["other"].frames == 13
    assert stats.frames == 21


def test_observe_message_counts_what_the_receiver_parsed() -> None:
    from_text, from_dict = StreamStats(clock=ticking_clock()), StreamStats(clock=ticking_clock())
    for message in call_messages(4):
        from_text.observe(json.dumps(message))
        from_dict.observe_message(message)
    assert from_dict.attributes() == from_text.attributes()
    assert from_dict.observe_message(["not", "an", "object"]) is not None
    assert from_dict.error_types == {"invalid_message": 1}


def test_canonical_frames_take_the_fast_path() -> None:
    """The per-frame budget depends on MiniVoice's layouts matching the raw-text fast path."""
    from collectors.media import _COMPACT_MEDIA_HEAD, _SPACED_MEDIA_HEAD

    frame = media(2, "inbound", 1, 0)
    assert _SPACED_MEDIA_HEAD(json.dumps(frame)) is not None
    assert _COMPACT_MEDIA_HEAD(json.dumps(frame, separators=(",", ":"))) is not None
    assert _SPACED_MEDIA_HEAD(json.dumps(frame, sort_keys=True)) is None
