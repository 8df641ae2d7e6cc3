"""The MiniVoice wire messages, as `/work/shared/minivoice-protocol.md` describes them.

Pure builders: the answer_url request body, the webhook bodies and the JSON text frames of
the media stream (`connected`, `start`, `media`, `stop`). No I/O, no clock: callers pass times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CALL_ID_HEADER = "X-MiniVoice-Call-Id"
"""The header MiniVoice sets on the answer_url request, besides `call.id` in the body (assumed)."""

STREAM_PROTOCOL = "minivoice.stream"
STREAM_PROTOCOL_VERSION = "1"

TRACKS_FOR = {"inbound": ("inbound",), "outbound": ("outbound",), "both": ("inbound", "outbound")}
"""The media tracks MiniVoice sends for each `start_stream` track value."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What MiniVoice knows about a call and repeats in every answer_url request and webhook."""

    call_id: str
    customer_id: str = "cust_demo"
    application_id: str = "app_demo"
    direction: str = "outbound"
    from_number: str = "+15551230001"
    to_number: str = "+15551230002"

    def as_json(self, status: str) -> dict[str, Any]:
        """The `call` object of answer_url and webhook bodies."""
        return {
            "id": self.call_id,
            "customer_id": self.customer_id,
            "application_id": self.application_id,
            "status": status,
            "direction": self.direction,
            "from": self.from_number,
            "to": self.to_number,
        }


def iso_utc(unix_ns: int) -> str:
    """A timestamp as MiniVoice writes `created_at`, to the millisecond: `2026-05-29T12:10:00.123Z`.

    Milliseconds matter: comparing receiver times with webhook times at one-second resolution
    would report a second of clock skew that is not there.
    """
    moment = datetime.fromtimestamp(unix_ns // 1_000_000 / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def answer_url_body(call: CallInfo, created_at_ns: int) -> dict[str, Any]:
    """The JSON body MiniVoice POSTs to the answer_url when the call is answered."""
    return {
        "event": "call.answered",
        "created_at": iso_utc(created_at_ns),
        "call": call.as_json("in-progress"),
    }


def webhook_body(event: str, call: CallInfo, status: str, created_at_ns: int) -> dict[str, Any]:
    """A lifecycle webhook body (`call.initiated`, `call.answered`, `call.completed`, ...)."""
    return {
        "event": event,
        "created_at": iso_utc(created_at_ns),
        "call": call.as_json(status),
        "variables": {},
        "data": {},
    }


def connected_message() -> str:
    """The first stream frame, sent as soon as the WebSocket is open."""
    return json.dumps({"event": "connected", "protocol": STREAM_PROTOCOL, "version": STREAM_PROTOCOL_VERSION})


def start_message(sequence_number: int, call_id: str, stream_id: str, tracks: tuple[str, ...]) -> str:
    """The `start` frame: the only place the receiver learns the call id from MiniVoice."""
    return json.dumps(
        {
            "event": "start",
            "sequence_number": sequence_number,
            "start": {
                "call_id": call_id,
                "stream_id": stream_id,
                "tracks": list(tracks),
                "media_format": {"encoding": "audio/x-mulaw", "sample_rate": 8000, "channels": 1},
            },
        }
    )


def media_message(sequence_number: int, track: str, chunk: int, timestamp_ms: int, payload: str) -> str:
    """One 20 ms `media` frame. `payload` is base64 already (it never needs JSON escaping)."""
    # Formatted by hand: this runs for every frame, and json.dumps costs more than the rest.
    return (
        f'{{"event": "media", "sequence_number": {sequence_number}, "media": {{"track": "{track}", '
        f'"chunk": {chunk}, "timestamp": {timestamp_ms}, "payload": "{payload}"}}}}'
    )


def stop_message(sequence_number: int, call_id: str, reason: str) -> str:
    """The `stop` frame, sent before MiniVoice closes the stream with code 1000."""
    return json.dumps(
        {"event": "stop", "sequence_number": sequence_number, "stop": {"call_id": call_id, "reason": reason}}
    )
