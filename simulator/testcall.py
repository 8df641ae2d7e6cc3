"""`callscope test-call`: one simulated MiniVoice call against a user's real endpoints.

The MiniVoice docs' Testing step, as a tool: "place a test call, return start_stream, speak for
a few seconds, then stop the stream or end the call; confirm call.completed still arrives even if
the stream receiver disconnects." The same simulator as the demo plays the platform, in real
time; each step is reported to an observer as it happens, and the call ends with a verdict
from the platform's side (`simulator.verdict`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from simulator.outcome import CallOutcome, Observer
from simulator.platform import Platform, PlatformConfig
from simulator.scenarios import get_scenario
from simulator.serving import client_context
from simulator.stream import StreamOptions
from simulator.verdict import PlatformVerdict, platform_verdict
from simulator.webhooks import WebhookOptions


@dataclass(frozen=True, slots=True)
class TestCallOptions:
    """The endpoints to call and how to play the call."""

    __test__ = False  # not a pytest test class, despite the name

    answer_url: str
    webhook_url: str | None = None
    scenario: str = "happy"
    seconds: float = 5.0
    ca_file: Path | None = None
    answer_url_timeout_s: float = 5.0
    speed: float = 1.0
    call_id: str | None = None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Trust for https/wss endpoints: the system store, plus `ca_file` when given."""
    return client_context(ca_file=ca_file)


async def place_test_call(
    options: TestCallOptions, observer: Observer | None = None
) -> tuple[CallOutcome, PlatformVerdict]:
    """Place the call, reporting steps to `observer`; return the outcome and its verdict."""
    scenario = get_scenario(options.scenario)
    context = tls_context(options.ca_file)
    config = PlatformConfig(
        answer_url=options.answer_url,
        webhook_url=options.webhook_url,
        answer_url_timeout_s=options.answer_url_timeout_s,
        media_seconds=options.seconds,
        speed=options.speed,
        ring_seconds=min(options.seconds, 3.0),
        hangup_s=0.2,
        ssl_context=context,
        stream=StreamOptions(ssl_context=context, use_system_proxy=True),
        webhooks=WebhookOptions(retries=4, backoff_s=0.5),
        use_system_proxy=True,
    )
    async with Platform(config) as platform:
        outcome = await platform.place_call(scenario, options.call_id, observer)
    verdict = platform_verdict(
        outcome,
        expect_webhooks=options.webhook_url is not None,
        answer_url_timeout_ms=options.answer_url_timeout_s * 1000,
    )
    return outcome, verdict
