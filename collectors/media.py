"""The MiniVoice media stream, read one WebSocket message at a time, and what it adds up to.

Pure: no I/O, no OpenTelemetry. `StreamStats.observe(message)` takes each message a receiver
gets (text or bytes, exactly as the WebSocket library hands it over) and counts it. It never
raises, whatever it is given: a broken or hostile stream becomes recorded errors (`error.type`
`invalid_json`, `binary_frame`, `frame_too_large`, `invalid_message`, `unexpected_event`), never an
exception in the host's receive loop.

The media hot path only counts. A canonical media frame, the form MiniVoice sends::

    {"event": "media", "sequence_number": 2, "media": {"track": "inbound", "chunk": 1,
     "timestamp": 20, "payload": "<base64>"}}

is recognised on the raw text in one call (`scan_media`: the C reader `collectors._media_fast`
when it is built, else an anchored regex over the short head and `str.find` over the payload,
identical results), so the receiver's own `json.loads` is the only parse: no second parse per
frame. The payload is never decoded nor kept; its size is computed from the base64 length.
Anything else (other key orders, escapes, other events) takes the general path, a full
`json.loads` and a field-by-field check; those messages are rare (connected, start, stop) or
unusual.

`observe` returns None for an ordinary message and a `Notice` for the few that matter to a
timeline (the `connected`, `start` and `stop` messages, the first media frame, errors), so the
caller can emit span events and log lines at the moment they happen.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

AttributeValue = str | bool | int | float | list[str]

KNOWN_EVENTS = ("connected", "start", "media", "stop")
"""Message `event` names MiniVoice sends. Any other name is recorded as `unexpected_event`."""

DEFAULT_MAX_MESSAGE_CHARS = 64 * 1024
"""Messages longer than this (characters or bytes) are not parsed but recorded as `frame_too_large`.

A MiniVoice media frame of 20 ms of mu-law is about 350 characters; 64 KiB leaves room for
long stop reasons and custom parameters while keeping a 16 MB message off the receive loop."""

MAX_TRACKS = 8
"""Distinct track names counted separately; more (a broken platform) are counted as `other`."""

MAX_ERROR_NOTICES = 20
"""Errors reported as a `Notice` (hence span events and log lines) per connection; later ones are
only counted, so a stream of garbage cannot flood the span or the log."""

_MESSAGE_SHOWN = 120

# The head of a canonical media frame, up to the opening quote of the payload, in the two layouts
# JSON serialisers produce: json.dumps' default (a space after ':' and ',') and compact (none, as
# JSON.stringify, Go and Jackson write it). Key order is MiniVoice's. Literal-only patterns match
# in about 250 ns; allowing arbitrary whitespace costs twice that, so other layouts take the
# general path instead.
_SPACED_MEDIA_HEAD = re.compile(
    r'\{"event": "media", "sequence_number": (0|[1-9][0-9]{0,17}), "media": \{"track": "([a-z_]{1,32})", '
    r'"chunk": (?:0|[1-9][0-9]{0,17}), "timestamp": (0|[1-9][0-9]{0,17}), "payload": "'
).match
_COMPACT_MEDIA_HEAD = re.compile(
    r'\{"event":"media","sequence_number":(0|[1-9][0-9]{0,17}),"media":\{"track":"([a-z_]{1,32})",'
    r'"chunk":(?:0|[1-9][0-9]{0,17}),"timestamp":(0|[1-9][0-9]{0,17}),"payload":"'
).match


def _scan_python(message: str) -> tuple[int, str, int, int] | None:
    """`scan_media` in Python: the fallback when the C reader is not built, and its test oracle."""
    head = _SPACED_MEDIA_HEAD(message) or _COMPACT_MEDIA_HEAD(message)
    # The payload runs from the head to the first quote, which must open the `"}}` that ends the
    # message; a backslash anywhere means escapes, hence the general path.
    if head is None or "\\" in message:
        return None
    start = head.end()
    end = len(message) - 3
    if message.find('"', start) != end or not message.endswith("}}"):
        return None
    size = (end - start) * 3 // 4 - message.count("=", end - 2, end)
    sequence, track, timestamp = head.groups()
    return int(sequence), track, int(timestamp), size if size > 0 else 0


def _load_scanner() -> Callable[[str], tuple[int, str, int, int] | None]:
    try:
        from collectors import _media_fast  # optional C extension (setup.py)
    except ImportError:
        return _scan_python
    return _media_fast.scan


scan_media = _load_scanner()
"""`(sequence_number, track, timestamp, payload_bytes)` of a canonical media frame, else None.

Canonical: exactly MiniVoice's key order, in json.dumps' spaced layout or the compact one,
integers of at most 18 digits, a track of 1 to 32 `[a-z_]`, a payload with no quote or backslash.
The C reader (`collectors/_media_fast.c`, built by `pip install -e .`) and `_scan_python` agree
on every input (tests/collectors/test_media_fast.py); `FAST_READER` says which one is in use."""

FAST_READER = scan_media is not _scan_python
"""True when the C frame reader is built and used (about 0.1 us per frame instead of 0.8 us)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a span event and a log line, seen at `at_ns` on the receiver's clock.

    `event` is one of `connected`, `start`, `first_media`, `stop`, `error`; `attributes` use the
    span contract's names (docs/spans.md), e.g. `minivoice.stop.reason` or `error.type`.
    """

    event: str
    at_ns: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class TrackStats:
    """Counters for one track (`inbound`, `outbound`, ...). `last_timestamp_ms` is meaningful
    once `frames` is at least 1."""

    __slots__ = ("bytes", "frames", "gap_max_ms", "last_timestamp_ms")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.gap_max_ms = 0
        self.last_timestamp_ms = 0


def base64_decoded_size(length: int, padding: int) -> int:
    """Bytes a base64 text of `length` characters decodes to, `padding` of them '='.

    Works for unpadded base64 too (length % 4 of 2 or 3). Nothing is decoded. The collector
    counts as padding the '=' among the last two characters (`text.count("=", -2)`), which for
    valid base64 is exactly its padding.
    """
    return max(0, (length * 3) // 4 - padding)


def _shown(text: str) -> str:
    return text if len(text) <= _MESSAGE_SHOWN else text[: _MESSAGE_SHOWN - 3] + "..."


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _as_int(value: object) -> int | None:
    """A JSON integer, or a float with an integral value; None for anything else (bool included)."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


class StreamStats:
    """Everything one WebSocket connection's messages add up to.

    Feed every received message to `observe` (or, when the receiver parses the JSON itself,
    the parsed message to `observe_message`). Read the results from the attributes, or as span
    attributes from `attributes()`. `clock` returns nanoseconds since the epoch (default
    `time.time_ns`); inject another to test or to model a skewed receiver clock.
    """

    __slots__ = (
        "_clock",
        "_fast_tracks",
        "call_id",
        "channels",
        "encoding",
        "error_types",
        "errors",
        "first_media_at_ns",
        "first_timestamp_ms",
        "last_media_at_ns",
        "last_timestamp_ms",
        "max_message_chars",
        "messages",
        "out_of_order",
        "protocol",
        "protocol_version",
        "sample_rate",
        "sequence_max",
        "sequence_min",
        "sequenced",
        "started_at_ns",
        "stop_reason",
        "stopped_at_ns",
        "stream_id",
        "track_stats",
        "tracks",
    )

    def __init__(
        self,
        *,
        clock: Callable[[], int] = time.time_ns,
        max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
    ) -> None:
        self._clock = clock
        self.max_message_chars = max_message_chars
        self.messages = 0
        # what the connected/start/stop messages said
        self.protocol: str | None = None
        self.protocol_version: str | None = None
        self.call_id: str | None = None
        self.stream_id: str | None = None
        self.tracks: list[str] | None = None
        self.encoding: str | None = None
        self.sample_rate: int | None = None
        self.channels: int | None = None
        self.started_at_ns: int | None = None
        self.stop_reason: str | None = None
        self.stopped_at_ns: int | None = None
        # media (frames and bytes are the sums over the tracks)
        self.track_stats: dict[str, TrackStats] = {}
        self.first_timestamp_ms: int | None = None
        self.last_timestamp_ms: int | None = None
        self.first_media_at_ns: int | None = None
        self.last_media_at_ns: int | None = None
        # Sequence numbers. Gaps are derived at the end from the count and the range (see
        # `sequence_gaps`), so a late frame fills the gap it left and nothing per frame is stored.
        self.sequenced = 0
        self.sequence_min = -1
        self.sequence_max = -1
        self.out_of_order = 0
        # The tracks whose frames may take the hot path: none until a sequence number is seen
        # (then `track_stats` itself, see `_sequence`).
        self._fast_tracks: dict[str, TrackStats] = {}
        # errors
        self.errors = 0
        self.error_types: dict[str, int] = {}

    # -- the hot path -------------------------------------------------------------------------

    def observe(self, message: object) -> Notice | None:
        """Count one received WebSocket message (`str` for a text frame, `bytes` for binary).

        Returns a `Notice` for the connected/start/stop messages, the first media frame and
        errors, None otherwise. Never raises.
        """
        try:
            self.messages += 1
            if type(message) is str and len(message) <= self.max_message_chars:
                scanned = scan_media(message)
                if scanned is not None:
                    sequence, track, timestamp, size = scanned
                    # Only a track already seen: its first frame (hence the stream's first) takes
                    # the general path, whose chunk number is reported.
                    stats = self._fast_tracks.get(track)
                    if stats is not None:
                        # The hot path, inlined (a method call costs as much as half of it); the
                        # same lines are in `observe_message`. Everything rarer is in `_media`.
                        now = self._clock()
                        self.sequenced += 1
                        if sequence > self.sequence_max:
                            self.sequence_max = sequence
                        else:
                            self._late(sequence)
                        stats.frames += 1
                        stats.bytes += size
                        gap = timestamp - stats.last_timestamp_ms
                        if gap > stats.gap_max_ms:  # noqa: PLR1730 (hot path: an `if` is cheaper than max())
                            stats.gap_max_ms = gap
                        stats.last_timestamp_ms = timestamp
                        self.last_timestamp_ms = timestamp
                        self.last_media_at_ns = now
                        return None
                return self._general(message)
            return self._unusual(message)
        except Exception as exc:  # the one broad except: counting must never break a receive loop
            return self.record_error("collector_error", f"{type(exc).__name__} while counting a message")

    def _late(self, sequence: int) -> None:
        # A sequence number not above every one before it (rare: the hot path's other branch).
        self.out_of_order += 1
        if sequence < self.sequence_min:  # noqa: PLR1730
            self.sequence_min = sequence

    def _media(
        self, sequence: int | None, track: str, chunk: object, timestamp: int, size: int
    ) -> Notice | None:
        now = self._clock()
        if sequence is not None:
            self._sequence(sequence)
        stats = self.track_stats.get(track)
        if stats is None:
            stats = self._new_track(track)
        if stats.frames and timestamp - stats.last_timestamp_ms > stats.gap_max_ms:
            stats.gap_max_ms = timestamp - stats.last_timestamp_ms
        stats.frames += 1
        stats.bytes += size
        stats.last_timestamp_ms = timestamp
        self.last_timestamp_ms = timestamp
        self.last_media_at_ns = now
        if self.first_media_at_ns is None:
            return self._first_media(now, track, chunk, timestamp)
        return None

    def _first_media(self, now: int, track: str, chunk: object, timestamp: int) -> Notice:
        self.first_timestamp_ms = timestamp
        self.first_media_at_ns = now
        attributes: dict[str, AttributeValue] = {
            "minivoice.media.track": track,
            "minivoice.media.timestamp_ms": timestamp,
        }
        chunk_number = int(chunk) if type(chunk) is str else _as_int(chunk)
        if chunk_number is not None:
            attributes["minivoice.media.chunk"] = chunk_number
        return Notice("first_media", now, attributes)

    def _new_track(self, track: str) -> TrackStats:
        # Track names become attribute names: anything odd, or one too many, counts as `other`.
        if len(self.track_stats) >= MAX_TRACKS or not track.replace("_", "").isalnum():
            track = "other"
            existing = self.track_stats.get(track)
            if existing is not None:
                return existing
        stats = self.track_stats[track] = TrackStats()
        return stats

    def _unusual(self, message: object) -> Notice | None:
        if isinstance(message, str):
            return self._error(
                "frame_too_large",
                f"text message of {len(message)} characters, over the {self.max_message_chars} "
                "limit; not parsed",
            )
        if isinstance(message, bytes | bytearray | memoryview):
            return self._error(
                "binary_frame",
                f"binary message of {len(message)} bytes; MiniVoice sends JSON text frames",
            )
        return self._error("invalid_message", f"a {_kind(message)} is not a WebSocket message")

    # -- the general path ---------------------------------------------------------------------

    def _general(self, text: str) -> Notice | None:
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            return self._error("invalid_json", f"not JSON ({reason}): {_shown(text)!r}")
        return self._read_checked(document)

    def observe_message(self, message: object) -> Notice | None:
        """Count one message the receiver has already parsed (what `json.loads` returned).

        For receivers that parse each frame anyway: counting from the parsed dict costs less
        than reading the raw text. Returns the same as `observe`. Never raises.
        """
        try:
            self.messages += 1
            # A well-formed media message first, with nothing but type checks: the hot path.
            # Everything else, including the errors, goes to `_read_checked`.
            if type(message) is dict and message.get("event") == "media":
                media = message.get("media")
                sequence = message.get("sequence_number")
                if type(media) is dict and type(sequence) is int and sequence >= 0:
                    track = media.get("track")
                    timestamp = media.get("timestamp")
                    payload = media.get("payload")
                    # Only a track already seen (so its first frame took the checked path).
                    stats = self._fast_tracks.get(track) if type(track) is str else None
                    if stats is not None and type(timestamp) is int and type(payload) is str:
                        size = len(payload) * 3 // 4 - payload.count("=", -2)
                        if size < 0:  # noqa: PLR1730 (hot path: an `if` is cheaper than max())
                            size = 0
                        # The hot path of `observe`, line for line.
                        now = self._clock()
                        self.sequenced += 1
                        if sequence > self.sequence_max:
                            self.sequence_max = sequence
                        else:
                            self._late(sequence)
                        stats.frames += 1
                        stats.bytes += size
                        gap = timestamp - stats.last_timestamp_ms
                        if gap > stats.gap_max_ms:  # noqa: PLR1730
                            stats.gap_max_ms = gap
                        stats.last_timestamp_ms = timestamp
                        self.last_timestamp_ms = timestamp
                        self.last_media_at_ns = now
                        return None
            return self._read_checked(message)
        except Exception as exc:  # never raise into the receive loop
            return self.record_error("collector_error", f"{type(exc).__name__} while counting a message")

    def _read_checked(self, message: object) -> Notice | None:
        if not isinstance(message, Mapping):
            return self._error("invalid_message", f"a JSON {_kind(message)}, not an object")
        event = message.get("event")
        if not isinstance(event, str):
            return self._error("invalid_message", f'"event" is {_kind(event)}, not a string')
        sequence = message.get("sequence_number")
        sequence_number = _as_int(sequence)
        if sequence is not None and (sequence_number is None or sequence_number < 0):
            return self._error(
                "invalid_message",
                f'{_shown(event)} message "sequence_number" is {_shown(repr(sequence))}, '
                "not a non-negative integer",
            )
        if event == "media":
            return self._checked_media(message.get("media"), sequence_number)
        if sequence_number is not None:
            self._sequence(sequence_number)
        if event == "start":
            return self._start(message.get("start"))
        if event == "stop":
            return self._stop(message.get("stop"))
        if event == "connected":
            return self._connected(message)
        return self._error("unexpected_event", f"unknown event {_shown(event)!r}")

    def _sequence(self, sequence: int) -> None:
        # The hot path's bookkeeping, for the other messages and the rare media frames.
        self.sequenced += 1
        if sequence > self.sequence_max:
            self.sequence_max = sequence
            if self.sequence_min < 0:
                self.sequence_min = sequence
                # From now on the lowest sequence number is known, so the hot path (open to the
                # tracks in this dict) need not check for the first one.
                self._fast_tracks = self.track_stats
        else:
            self.out_of_order += 1
            self.sequence_min = min(self.sequence_min, sequence)

    def _checked_media(self, media: object, sequence: int | None) -> Notice | None:
        if not isinstance(media, Mapping):
            return self._error("invalid_message", f'media message "media" is {_kind(media)}, not an object')
        track = media.get("track")
        timestamp = _as_int(media.get("timestamp"))
        payload = media.get("payload")
        if not isinstance(track, str) or not track:
            return self._error("invalid_message", f'media "track" is {_shown(repr(track))}, not a track name')
        if timestamp is None:
            return self._error(
                "invalid_message",
                f'media "timestamp" is {_shown(repr(media.get("timestamp")))}, not an integer',
            )
        if not isinstance(payload, str):
            return self._error("invalid_message", f'media "payload" is {_kind(payload)}, not base64 text')
        size = base64_decoded_size(len(payload), payload.count("=", -2))
        return self._media(sequence, str(track)[:32], media.get("chunk"), timestamp, size)

    def _connected(self, message: Mapping[str, Any]) -> Notice:
        protocol, version = message.get("protocol"), message.get("version")
        attributes: dict[str, AttributeValue] = {}
        if isinstance(protocol, str | int):
            self.protocol = _shown(str(protocol))
            attributes["minivoice.protocol"] = self.protocol
        if isinstance(version, str | int):
            self.protocol_version = _shown(str(version))
            attributes["minivoice.protocol_version"] = self.protocol_version
        return Notice("connected", self._clock(), attributes)

    def _start(self, start: object) -> Notice | None:
        if not isinstance(start, Mapping):
            return self._error("invalid_message", f'start message "start" is {_kind(start)}, not an object')
        if self.started_at_ns is not None:
            return self._error("unexpected_event", "a second start message on the same connection")
        self.started_at_ns = self._clock()
        attributes: dict[str, AttributeValue] = {}
        call_id = start.get("call_id")
        if isinstance(call_id, str) and call_id:
            self.call_id = call_id
            attributes["minivoice.call_id"] = call_id
        stream_id = start.get("stream_id")
        if isinstance(stream_id, str) and stream_id:
            self.stream_id = _shown(stream_id)
            attributes["minivoice.stream_id"] = self.stream_id
        tracks = start.get("tracks")
        if isinstance(tracks, list) and all(isinstance(track, str) for track in tracks):
            self.tracks = [_shown(track) for track in tracks[:MAX_TRACKS]]
            attributes["minivoice.stream.tracks"] = list(self.tracks)
        media_format = start.get("media_format")
        if isinstance(media_format, Mapping):
            encoding = media_format.get("encoding")
            sample_rate = _as_int(media_format.get("sample_rate"))
            channels = _as_int(media_format.get("channels"))
            if isinstance(encoding, str):
                self.encoding = _shown(encoding)
                attributes["minivoice.media.encoding"] = self.encoding
            if sample_rate is not None:
                self.sample_rate = sample_rate
                attributes["minivoice.media.sample_rate"] = sample_rate
            if channels is not None:
                self.channels = channels
                attributes["minivoice.media.channels"] = channels
        return Notice("start", self.started_at_ns, attributes)

    def _stop(self, stop: object) -> Notice | None:
        if stop is not None and not isinstance(stop, Mapping):
            return self._error("invalid_message", f'stop message "stop" is {_kind(stop)}, not an object')
        if self.stopped_at_ns is not None:
            return self._error("unexpected_event", "a second stop message on the same connection")
        self.stopped_at_ns = self._clock()
        attributes: dict[str, AttributeValue] = {}
        reason = stop.get("reason") if stop is not None else None
        if isinstance(reason, str):
            self.stop_reason = _shown(reason)
            attributes["minivoice.stop.reason"] = self.stop_reason
        return Notice("stop", self.stopped_at_ns, attributes)

    # -- errors and results -------------------------------------------------------------------

    def _error(self, error_type: str, message: str) -> Notice | None:
        # error.type is a closed vocabulary; the message may quote the frame, bounded.
        self.errors += 1
        self.error_types[error_type] = self.error_types.get(error_type, 0) + 1
        if self.errors > MAX_ERROR_NOTICES:
            return None
        return Notice("error", self._clock(), {"error.type": error_type, "error.message": message})

    def record_error(self, error_type: str, message: str) -> Notice | None:
        """Count an error seen outside the messages (a handler exception, for example)."""
        try:
            return self._error(error_type, message)
        except Exception:  # never raise into the host
            return None

    @property
    def frames(self) -> int:
        """Media frames counted, all tracks."""
        return sum(stats.frames for stats in self.track_stats.values())

    @property
    def bytes(self) -> int:
        """Decoded media payload bytes, all tracks (computed from the base64 lengths)."""
        return sum(stats.bytes for stats in self.track_stats.values())

    @property
    def sequence_gaps(self) -> int:
        """Sequence numbers missing between the lowest and highest seen (late arrivals fill gaps)."""
        if not self.sequenced:
            return 0
        return max(0, self.sequence_max - self.sequence_min + 1 - self.sequenced)

    @property
    def gap_max_ms(self) -> int:
        """The largest step between consecutive media timestamps on any one track."""
        return max((stats.gap_max_ms for stats in self.track_stats.values()), default=0)

    def attributes(self) -> dict[str, AttributeValue]:
        """The counters as `stream.receiver` span attributes (names from docs/spans.md)."""
        attributes: dict[str, AttributeValue] = {
            "minivoice.messages": self.messages,
            "minivoice.media.frames": self.frames,
            "minivoice.media.bytes": self.bytes,
            "minivoice.media.sequence_gaps": self.sequence_gaps,
            "minivoice.media.out_of_order": self.out_of_order,
            "minivoice.media.gap_max_ms": self.gap_max_ms,
            "minivoice.errors": self.errors,
        }
        for track, stats in self.track_stats.items():
            attributes[f"minivoice.media.{track}.frames"] = stats.frames
            attributes[f"minivoice.media.{track}.bytes"] = stats.bytes
        # A track announced in `start` that never sent a frame is the finding: show it as 0.
        for track in self.tracks or ():
            if track not in self.track_stats and len(track) <= 32 and track.replace("_", "").isalnum():
                attributes.setdefault(f"minivoice.media.{track}.frames", 0)
                attributes.setdefault(f"minivoice.media.{track}.bytes", 0)
        optional: dict[str, AttributeValue | None] = {
            "minivoice.stream_id": self.stream_id,
            "minivoice.stream.tracks": self.tracks,
            "minivoice.media.encoding": self.encoding,
            "minivoice.media.sample_rate": self.sample_rate,
            "minivoice.media.channels": self.channels,
            "minivoice.protocol": self.protocol,
            "minivoice.protocol_version": self.protocol_version,
            "minivoice.media.first_timestamp_ms": self.first_timestamp_ms,
            "minivoice.media.last_timestamp_ms": self.last_timestamp_ms,
            "minivoice.media.first_at_unix_nano": self.first_media_at_ns,
            "minivoice.media.last_at_unix_nano": self.last_media_at_ns,
            "minivoice.stop.reason": self.stop_reason,
        }
        attributes.update({key: value for key, value in optional.items() if value is not None})
        if self.error_types:
            attributes["minivoice.error.types"] = list(self.error_types)
        return attributes
