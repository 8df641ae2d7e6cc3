"""What the simulated platform saw during one call: the ground truth for tests and `test-call`.

Plain value objects, filled in by `simulator.platform` as the call goes; `CallOutcome.record`
notifies an optional observer so that `callscope test-call` can print each step as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Stage = str
"""`answer_url`, `action`, `connect`, `media`, `stream`, `lifecycle`: the MiniVoice debug order."""


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the platform did or saw, in the order it happened."""

    at_ns: int
    stage: Stage
    ok: bool
    message: str


@dataclass(slots=True)
class WebhookDelivery:
    """One webhook event and how its delivery went (at-least-once, so maybe several copies)."""

    event: str
    created_at_ns: int
    copies: int = 1
    attempts: int = 0
    delivered: int = 0
    """Copies the webhook endpoint acknowledged with a 2xx."""
    last_status: int | None = None
    last_error: str | None = None
    withheld: bool = False
    """The platform fault `webhook_lost`: never sent."""


Observer = Callable[["CallOutcome", Step], None]


@dataclass(slots=True)
class CallOutcome:
    """Everything the platform knows about one call once it has ended."""

    call_id: str
    scenario: str
    expected_verdict: str
    started_ns: int = 0
    ended_ns: int = 0
    steps: list[Step] = field(default_factory=list)
    # answer_url
    answer_url_status: int | None = None
    answer_url_latency_ms: float | None = None
    answer_url_error: str | None = None
    answer_url_body: str | None = None
    action_valid: bool | None = None
    action_problems: list[str] = field(default_factory=list)
    action_result: dict[str, Any] | None = None
    stream_url: str | None = None
    track: str | None = None
    # stream
    stream_requested: bool = False
    connected: bool = False
    connect_error: str | None = None
    media_frames_sent: int = 0
    stop_sent: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None
    """`platform` (we closed), `receiver` (they closed first), `network` (no close frame)."""
    # lifecycle
    final_status: str | None = None
    webhooks: list[WebhookDelivery] = field(default_factory=list)
    observer: Observer | None = field(default=None, repr=False, compare=False)

    def record(self, stage: Stage, ok: bool, message: str) -> Step:
        """Append a step (time now, on the platform's clock) and tell the observer."""
        step = Step(time.time_ns(), stage, ok, message)
        self.steps.append(step)
        if self.observer is not None:
            self.observer(self, step)
        return step

    @property
    def completed_delivered(self) -> bool:
        """At least one copy of `call.completed` was acknowledged by the webhook endpoint."""
        return any(w.event == "call.completed" and w.delivered for w in self.webhooks)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for `--json` output and test failure messages)."""
        return {
            "call_id": self.call_id,
            "scenario": self.scenario,
            "expected_verdict": self.expected_verdict,
            "answer_url_status": self.answer_url_status,
            "answer_url_latency_ms": self.answer_url_latency_ms,
            "answer_url_error": self.answer_url_error,
            "action_valid": self.action_valid,
            "action_problems": self.action_problems,
            "action_result": self.action_result,
            "stream_url": self.stream_url,
            "connected": self.connected,
            "connect_error": self.connect_error,
            "media_frames_sent": self.media_frames_sent,
            "stop_sent": self.stop_sent,
            "close_code": self.close_code,
            "closed_by": self.closed_by,
            "final_status": self.final_status,
            "webhooks": [
                {"event": w.event, "copies": w.copies, "delivered": w.delivered, "withheld": w.withheld}
                for w in self.webhooks
            ],
            "steps": [{"stage": s.stage, "ok": s.ok, "message": s.message} for s in self.steps],
        }
