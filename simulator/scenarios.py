"""Named fault scenarios, each with the verdict callscope must reach for it (the ground truth).

A scenario says who injects the fault:

- `platform`: the simulator itself misbehaves the way MiniVoice or the network can (a lost
  or duplicated webhook, webhooks out of order, a network drop mid-stream, a busy line);
- `customer`: the customer's application misbehaves (the answer_url errors, times out or
  returns a bad action; the receiver refuses, drops or skews). The simulator only asks for it,
  with the `X-Callscope-Scenario` header on the answer_url request; the demo app
  (`simulator.demo_app`) reads that header and misbehaves accordingly. Against real endpoints
  (`callscope test-call`) customer scenarios are whatever the endpoints really do;
- `none`: nothing is injected.

The verdict names are those of `docs/verdicts.md` (issue 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SCENARIO_HEADER = "X-Callscope-Scenario"
"""Answer_url request header naming the scenario, so the demo app can inject customer-side faults."""

Injector = Literal["none", "platform", "customer"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One way a call can go, and the verdict it must produce.

    The boolean fields are what the simulated platform does; customer-side behaviour lives in
    the demo app, keyed by `name`.
    """

    name: str
    expected_verdict: str
    injected_by: Injector
    description: str
    answered: bool = True
    """False: the call is never answered, so no answer_url request and no stream."""
    final_status: str = "completed"
    """`call.status` of the `call.completed` webhook."""
    send_media: bool = True
    """False: connect and send `start`, then silence until the call ends."""
    network_drop: bool = False
    """Abort the TCP connection halfway through the media, without a close frame."""
    lose_completed: bool = False
    """Never deliver `call.completed`."""
    duplicate_webhooks: bool = False
    """Deliver every webhook twice, and `call.completed` three times."""
    reorder_webhooks: bool = False
    """Hold `call.initiated` and `call.answered` back until after `call.completed`."""
    skewed_receiver_clock: bool = False
    """The receiver's clock is off by seconds: callscope must report the skew, not change the verdict."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "happy",
            "ok",
            "none",
            "start_stream to a wss receiver, a few seconds of audio, stop, close 1000, call.completed.",
        ),
        Scenario(
            "no_stream_requested",
            "no_stream",
            "customer",
            "The answer_url returns a valid response without start_stream (only stop_stream).",
        ),
        Scenario(
            "answer_url_500",
            "answer_url_failed",
            "customer",
            "The answer_url answers HTTP 500.",
        ),
        Scenario(
            "answer_url_timeout",
            "answer_url_failed",
            "customer",
            "The answer_url answers only after MiniVoice's answer_url timeout.",
        ),
        Scenario(
            "answer_url_not_json",
            "answer_url_failed",
            "customer",
            "The answer_url answers 200 with an HTML page instead of JSON.",
        ),
        Scenario(
            "invalid_scheme",
            "invalid_action",
            "customer",
            "start_stream with an https:// stream_url; MiniVoice requires wss.",
        ),
        Scenario(
            "invalid_track",
            "invalid_action",
            "customer",
            'start_stream with track "speaker"; MiniVoice accepts inbound, outbound or both.',
        ),
        Scenario(
            "receiver_down",
            "stream_not_connected",
            "customer",
            "The stream_url points at a port where nothing listens: connection refused.",
        ),
        Scenario(
            "tls_failure",
            "stream_not_connected",
            "customer",
            "The receiver presents a certificate from a CA that MiniVoice does not trust.",
        ),
        Scenario(
            "handshake_rejected",
            "stream_not_connected",
            "customer",
            "The receiver answers the WebSocket handshake with HTTP 403 instead of 101.",
        ),
        Scenario(
            "no_media",
            "no_media",
            "platform",
            "The stream connects and starts, but no media frame is ever sent.",
            send_media=False,
        ),
        Scenario(
            "receiver_closes_early",
            "stream_dropped",
            "customer",
            "The receiver closes the stream with 1011 after a few frames; the call goes on.",
        ),
        Scenario(
            "network_drop",
            "stream_dropped",
            "platform",
            "The TCP connection is cut mid-stream with no close frame (1006); the call goes on.",
            network_drop=True,
        ),
        Scenario(
            "webhook_lost",
            "webhook_missing",
            "platform",
            "call.completed is never delivered.",
            lose_completed=True,
        ),
        Scenario(
            "duplicate_webhooks",
            "ok",
            "platform",
            "Every webhook is delivered twice and call.completed three times (at-least-once delivery).",
            duplicate_webhooks=True,
        ),
        Scenario(
            "out_of_order_webhooks",
            "ok",
            "platform",
            "call.completed is delivered before call.answered and call.initiated.",
            reorder_webhooks=True,
        ),
        Scenario(
            "busy",
            "call_failed",
            "platform",
            "The callee is busy: the call is never answered; call.completed has status busy.",
            answered=False,
            final_status="busy",
        ),
        Scenario(
            "no_answer",
            "call_failed",
            "platform",
            "Nobody answers: no answer_url request; call.completed has status no-answer.",
            answered=False,
            final_status="no-answer",
        ),
        Scenario(
            "skewed_receiver_clock",
            "ok",
            "customer",
            "A normal call whose receiver host clock is seconds off; the skew is reported.",
            skewed_receiver_clock=True,
        ),
    )
}
"""Every scenario by name, in a stable order (happy first)."""


class UnknownScenario(KeyError):
    """A scenario name that is not in `SCENARIOS`. The message lists the known ones."""

    def __str__(self) -> str:
        return f"unknown scenario {self.args[0]!r}; known: {', '.join(SCENARIOS)}"


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`, or `UnknownScenario` listing the valid names."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UnknownScenario(name) from None


def demo_mix(calls: int) -> list[Scenario]:
    """A realistic mix for `calls` calls: every scenario once, then happy calls for the rest.

    With fewer calls than scenarios, the first `calls` scenarios (happy first). The order is
    interleaved so faults are spread over the run instead of bunched at the start.
    """
    if calls <= 0:
        return []
    faults = [s for s in SCENARIOS.values() if s.name != "happy"]
    if calls <= len(faults) + 1:
        return list(SCENARIOS.values())[:calls]
    happy = SCENARIOS["happy"]
    mix = [happy] * (calls - len(faults))
    step = (len(mix) - 1) / len(faults)
    # Insert from the back so earlier insertion points stay valid; the first call stays happy.
    for i in reversed(range(len(faults))):
        mix.insert(1 + int(i * step), faults[i])
    return mix
