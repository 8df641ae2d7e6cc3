"""The media frame reader: the C one (`collectors._media_fast`) and its Python twin agree on every
input, and StreamStats counts the same whichever one it uses."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import collectors.media
from collectors.media import StreamStats, _scan_python

from .test_media import call_messages, media
from .test_media_fuzz import FIXED_NS, valid_media

Reader = Callable[[str], tuple[int, str, int, int] | None]


def c_reader() -> Reader:
    module = pytest.importorskip("collectors._media_fast", reason="C reader not built (no compiler)")
    scan: Reader = module.scan
    return scan


@contextmanager
def reading_with(reader: Reader) -> Iterator[None]:
    """StreamStats reads frames with `reader` inside the block (the module-level choice)."""
    saved = collectors.media.scan_media
    collectors.media.scan_media = reader
    try:
        yield
    finally:
        collectors.media.scan_media = saved


def layouts(message: dict[str, Any]) -> list[str]:
    return [json.dumps(message), json.dumps(message, separators=(",", ":"))]


def test_the_c_reader_is_built_and_used() -> None:
    """`pip install -e .` builds it here; without it the hot path is ~0.8 us slower per frame."""
    scan = c_reader()
    assert collectors.media.FAST_READER
    assert collectors.media.scan_media is scan


def test_a_canonical_frame_in_both_layouts() -> None:
    scan = c_reader()
    frame = media(7, "inbound", 3, 40, size=160)
    for text in layouts(frame):
        assert scan(text) == _scan_python(text) == (7, "inbound", 40, 160)
    assert scan(json.dumps(frame, sort_keys=True)) is None  # another key order: general path


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"event": "media"}',
        '{"event": "media", "sequence_number": 01, "media": {"track": "inbound", "chunk": 1, '
        '"timestamp": 0, "payload": "AA=="}}',  # leading zero: not JSON
        '{"event": "media", "sequence_number": 1234567890123456789, "media": {"track": "inbound", '
        '"chunk": 1, "timestamp": 0, "payload": "AA=="}}',  # 19 digits
        '{"event": "media", "sequence_number": 1, "media": {"track": "' + "a" * 33 + '", "chunk": 1, '
        '"timestamp": 0, "payload": "AA=="}}',  # track over 32
        '{"event": "media", "sequence_number": 1, "media": {"track": "Inbound", "chunk": 1, '
        '"timestamp": 0, "payload": "AA=="}}',  # upper case
        '{"event": "media", "sequence_number": 1, "media": {"track": "inbound", "chunk": 1, '
        '"timestamp": 0, "payload": "A\\"A"}}',  # escaped quote
        '{"event": "media", "sequence_number": 1, "media": {"track": "inbound", "chunk": 1, '
        '"timestamp": 0, "payload": "AA", "x": "y"}}',  # another key after the payload
        '{"event": "media", "sequence_number": 1, "media": {"track": "inbound", "chunk": 1, '
        '"timestamp": 0, "payload": "AA=="}} ',  # trailing space
        '{"event": "media", "sequence_number": 1, "media": {"track": "inbound", "chunk": 1, '
        '"timestamp": 0, "payload": "="}}',  # size would be negative: 0
        '{"event": "media", "sequence_number": 1, "media": {"track": "inbound", "chunk": 1, '
        '"timestamp": 0, "payload": ""}}',  # empty payload
        '{"event":"media","sequence_number":0,"media":{"track":"_","chunk":0,"timestamp":0,"payload":"é"}}',
        '{"event":"media","sequence_number":0,"media":{"track":"_","chunk":0,"timestamp":0,"payload":"Ā"}}',
        '{"event":"media","sequence_number":0,"media":{"track":"_","chunk":0,"timestamp":0,"payload"',
    ],
)
def test_edge_cases_read_alike(text: str) -> None:
    scan = c_reader()
    expected = _scan_python(text)
    if any(ord(ch) > 0xFF for ch in text):
        # Only 1-byte strings are read in C; others take the general path, which counts the same.
        assert scan(text) is None
    else:
        assert scan(text) == expected


def test_non_strings_are_not_frames() -> None:
    scan: Callable[[object], object] = c_reader()  # type: ignore[assignment]
    for value in (None, b'{"event": "media"}', 12, ["x"]):
        assert scan(value) is None


@settings(max_examples=400, deadline=None)
@given(valid_media, st.booleans())
def test_canonical_frames_read_alike(message: dict[str, Any], compact: bool) -> None:
    scan = c_reader()
    text = json.dumps(message, separators=(",", ":") if compact else None)
    scanned = scan(text)
    assert scanned == _scan_python(text)
    if scanned is not None:  # what json.loads reads, and the payload's size without decoding it
        media = message["media"]
        payload = media["payload"]
        size = max(0, len(payload) * 3 // 4 - payload.count("=", -2))
        assert scanned == (message["sequence_number"], media["track"], media["timestamp"], size)


@settings(max_examples=1500, deadline=None)
@given(valid_media, st.booleans(), st.data())
def test_damaged_frames_read_alike(message: dict[str, Any], compact: bool, data: st.DataObject) -> None:
    scan = c_reader()
    text = json.dumps(message, separators=(",", ":") if compact else None)
    index = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    significant = st.sampled_from([*'\\"{}[],: -+.0123456789=eE_az', "\\/", "é", "Ā"])
    replacement = data.draw(st.lists(significant | st.characters(max_codepoint=0x2FF), max_size=3))
    damaged = text[:index] + "".join(replacement) + text[index + 1 :]
    expected = _scan_python(damaged)
    if any(ord(ch) > 0xFF for ch in damaged):
        assert scan(damaged) is None
    else:
        assert scan(damaged) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable, max_size=200))
def test_any_text_reads_alike(text: str) -> None:
    scan = c_reader()
    assert scan(text) == _scan_python(text)


@pytest.mark.parametrize("reader", ["c", "python"])
def test_a_whole_stream_counts_the_same_with_either_reader(reader: str) -> None:
    chosen = c_reader() if reader == "c" else _scan_python
    with reading_with(chosen):
        from_text = StreamStats(clock=lambda: FIXED_NS)
        for message in call_messages(6):
            for text in layouts(message)[:1]:
                from_text.observe(text)
    from_dict = StreamStats(clock=lambda: FIXED_NS)
    for message in call_messages(6):
        from_dict.observe_message(message)
    assert from_text.attributes() == from_dict.attributes()
    assert from_text.frames == 12


@settings(max_examples=600, deadline=None)
@given(valid_media, st.booleans(), st.data(), st.sampled_from(["c", "python"]))
def test_a_damaged_frame_on_a_known_track_counts_as_json_reads_it(
    message: dict[str, Any], compact: bool, data: st.DataObject, reader: str
) -> None:
    """After a track's first frame (so the hot path is open to it), a damaged frame on the same
    track is counted exactly as json.loads reads it, with either reader."""
    chosen = c_reader() if reader == "c" else _scan_python
    first = {**message, "sequence_number": 0, "media": {**message["media"], "timestamp": 0}}
    text = json.dumps(message, separators=(",", ":") if compact else None)
    index = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    replacement = data.draw(st.sampled_from([*'\\"{}[],: -+.0123456789=e_a', "", "é", "Ā", "\\/"]))
    damaged = text[:index] + replacement + text[index + 1 :]
    with reading_with(chosen):
        observed = StreamStats(clock=lambda: FIXED_NS, max_message_chars=4096)
        observed.observe(json.dumps(first))
        observed.observe(damaged)
    expected = StreamStats(clock=lambda: FIXED_NS, max_message_chars=4096)
    expected.observe_message(first)
    try:
        document = json.loads(damaged)
    except ValueError:
        expected.messages += 1
        expected.record_error("invalid_json", "")
    else:
        expected.observe_message(document)
    assert observed.attributes() == expected.attributes()
