"""Audio for the simulated media stream: 20 ms frames of 8 kHz G.711 µ-law, base64-encoded.

MiniVoice media frames carry 160 bytes of µ-law (20 ms at 8000 Hz). The simulator plays a
quiet tone rather than silence, so a receiver that decodes audio gets something audible.
Payloads are computed once and reused: the hot loop only formats JSON around them.
"""

from __future__ import annotations

import base64
import math
from functools import cache

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160
FRAMES_PER_SECOND = 1000 // FRAME_MS

_BIAS = 0x21  # 0x84 >> 2, on 14-bit magnitudes
_CLIP = 8159


def mulaw_byte(sample: int) -> int:
    """One signed 16-bit PCM sample as a G.711 µ-law byte (bit-exact with `audioop.lin2ulaw`)."""
    value = sample >> 2  # G.711 works on 14-bit samples
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, _CLIP) + _BIAS
    segment = max(value.bit_length() - 6, 0)
    if segment > 7:  # beyond the last segment: the largest code
        return 0x7F ^ mask
    return (((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask) & 0xFF


@cache
def tone_payloads(frequency_hz: float = 440.0, amplitude: int = 4000) -> tuple[str, ...]:
    """One second of a sine tone as base64 payloads, one per 20 ms frame.

    440 Hz completes a whole number of cycles in one second, so the frames loop seamlessly.
    """
    samples = [
        round(amplitude * math.sin(2 * math.pi * frequency_hz * n / SAMPLE_RATE)) for n in range(SAMPLE_RATE)
    ]
    pcm = bytes(mulaw_byte(s) for s in samples)
    return tuple(
        base64.b64encode(pcm[i : i + FRAME_BYTES]).decode("ascii") for i in range(0, len(pcm), FRAME_BYTES)
    )
