"""The simulated MiniVoice platform: one call from first ring to `call.completed`.

For each call, in order: `call.initiated`; (busy/no-answer calls stop here, with their final
status); `call.answered` and the answer_url request; validation of the returned actions; for
an accepted `start_stream`, the `wss` media stream; then `call.completed`. Webhooks go out
concurrently with the call, at least once, with retries. Every step lands in the call's
`CallOutcome`, the ground truth that callscope's verdicts are checked against.

Usage::

    async with Platform(PlatformConfig(answer_url=..., webhook_url=...)) as platform:
        outcome = await platform.place_call("happy")
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from collectors.privacy import redact_text, redact_url
from simulator.answer_url import AnswerUrlResult, action_result, body_preview, fetch_actions
from simulator.messages import CallInfo, webhook_body
from simulator.outcome import CallOutcome, Observer, WebhookDelivery
from simulator.scenarios import SCENARIO_HEADER, Scenario, get_scenario
from simulator.stream import StreamOptions, StreamPlan, stream_media
from simulator.webhooks import WebhookOptions, deliver


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    """Where the customer's endpoints are, and how the platform behaves."""

    answer_url: str
    webhook_url: str | None = None
    answer_url_timeout_s: float = 5.0
    """How long the platform waits for the answer_url (MiniVoice: assumed 5 s)."""
    media_seconds: float = 5.0
    """Seconds of audio per streamed call; also the length of calls that do not stream."""
    speed: float = 1.0
    """Time acceleration: 1.0 is real time, 10.0 plays 5 s of audio in 0.5 s, `math.inf` unpaced."""
    ring_seconds: float = 1.0
    """How long an unanswered (busy/no-answer) call rings, before `speed` is applied."""
    hangup_s: float = 0.05
    """Pause between the end of the stream and `call.completed`, in real seconds."""
    ssl_context: ssl.SSLContext | None = None
    """Trust for https answer_url/webhook URLs and wss receivers; None: the system trust store."""
    stream: StreamOptions = field(default_factory=StreamOptions)
    webhooks: WebhookOptions = field(default_factory=WebhookOptions)
    customer_id: str = "cust_demo"
    application_id: str = "app_demo"
    send_scenario_header: bool = True
    """Send `X-Callscope-Scenario` so a demo app can inject the customer-side faults."""
    use_system_proxy: bool = False

    def scaled(self, seconds: float) -> float:
        """Seconds of call time as real seconds under `speed`."""
        return 0.0 if math.isinf(self.speed) or self.speed <= 0 else seconds / self.speed


def new_call_id() -> str:
    """A fresh MiniVoice-looking call id."""
    return "call_" + uuid.uuid4().hex[:20]


class Platform:
    """Places simulated calls against one customer's endpoints. Use as an async context manager.

    Each call gets its own HTTP client, as if placed by a different platform worker: one
    shared pool for hundreds of concurrent calls costs more in pool bookkeeping (quadratic in
    httpcore) than the calls themselves. Pass `http_client` to share one anyway.
    """

    def __init__(self, config: PlatformConfig, *, http_client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._shared_client = http_client

    async def __aenter__(self) -> Platform:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self.config.ssl_context or True,
            trust_env=self.config.use_system_proxy,
            headers={"User-Agent": "MiniVoice-Simulator (callscope)"},
        )

    async def place_call(
        self,
        scenario: Scenario | str,
        call_id: str | None = None,
        observer: Observer | None = None,
    ) -> CallOutcome:
        """Play one call of `scenario` from start to end and return what the platform saw."""
        if isinstance(scenario, str):
            scenario = get_scenario(scenario)
        call = CallInfo(
            call_id or new_call_id(),
            customer_id=self.config.customer_id,
            application_id=self.config.application_id,
        )
        outcome = CallOutcome(call.call_id, scenario.name, scenario.expected_verdict, observer=observer)
        outcome.started_ns = time.time_ns()
        client = self._shared_client or self._new_client()
        flow = _CallFlow(self.config, client, scenario, call, outcome)
        try:
            await flow.run()
        finally:
            try:
                await flow.finish_webhooks()
            finally:
                if client is not self._shared_client:
                    await client.aclose()
        outcome.ended_ns = time.time_ns()
        return outcome


class _CallFlow:
    """The state of one call in progress."""

    def __init__(
        self,
        config: PlatformConfig,
        client: httpx.AsyncClient,
        scenario: Scenario,
        call: CallInfo,
        outcome: CallOutcome,
    ) -> None:
        self.config = config
        self.client = client
        self.scenario = scenario
        self.call = call
        self.outcome = outcome
        self.in_flight: list[asyncio.Task[None]] = []
        self.held: list[tuple[dict[str, Any], WebhookDelivery]] = []

    async def run(self) -> None:
        config, scenario, outcome = self.config, self.scenario, self.outcome
        if config.webhook_url is None:
            outcome.record("lifecycle", True, "no webhook_url given: webhooks are not delivered")
        self.webhook("call.initiated", "initiated")
        if not scenario.answered:
            await asyncio.sleep(config.scaled(config.ring_seconds))
            outcome.record("lifecycle", False, f"call not answered: {scenario.final_status}")
            self.complete(scenario.final_status)
            return
        self.webhook("call.answered", "in-progress")
        call_ends_at = time.monotonic() + config.scaled(config.media_seconds)
        answer = await fetch_actions(
            self.client,
            config.answer_url,
            self.call,
            timeout_s=config.answer_url_timeout_s,
            headers={SCENARIO_HEADER: scenario.name} if config.send_scenario_header else None,
        )
        if self._record_answer(answer):
            await self._execute_actions(answer)
        else:
            call_ends_at = time.monotonic()  # MiniVoice hangs up when it has no instructions
        await asyncio.sleep(max(0.0, call_ends_at - time.monotonic()) + config.hangup_s)
        self.complete("completed")

    def _record_answer(self, answer: AnswerUrlResult) -> bool:
        """Record the answer_url step; True when there are actions to execute."""
        outcome = self.outcome
        outcome.answer_url_status = answer.status
        outcome.answer_url_latency_ms = round(answer.latency_ms, 1)
        # For display: secrets in URLs (a token in the stream_url) never reach the output.
        outcome.answer_url_body = redact_text(body_preview(answer.body)) if answer.body else None
        if answer.failed:
            outcome.answer_url_error = answer.failure
            outcome.record("answer_url", False, f"{answer.failure} ({answer.latency_ms:.0f} ms)")
            return False
        outcome.record(
            "answer_url", True, f"answer_url answered HTTP {answer.status} in {answer.latency_ms:.0f} ms"
        )
        return True

    async def _execute_actions(self, answer: AnswerUrlResult) -> None:
        outcome = self.outcome
        check = answer.check
        assert check is not None
        outcome.action_valid = check.valid
        outcome.action_problems = [p.code for p in check.problems]
        outcome.action_result = action_result(check)
        start = check.start_stream
        if start is not None:
            outcome.stream_url = redact_url(str(start.get("stream_url")))
            outcome.track = str(start.get("track"))
        if not check.valid:
            problems = "; ".join(p.message for p in check.problems)
            outcome.record("action", False, f"actions rejected, not executed: {problems}")
            return
        outcome.record("action", True, f'{{"result": "{outcome.action_result["result"]}"}}')
        if start is None:
            outcome.record("action", True, "no start_stream action: the call goes on without a stream")
            return
        outcome.stream_requested = True
        config = self.config
        frames = round(config.media_seconds * 50)
        plan = StreamPlan(
            stream_url=str(start["stream_url"]),
            call_id=self.call.call_id,
            track=str(start["track"]),
            media_seconds=config.media_seconds,
            speed=config.speed,
            send_media=self.scenario.send_media,
            drop_after_frames=frames // 2 if self.scenario.network_drop else None,
        )
        await stream_media(plan, config.stream, outcome)

    # webhooks -------------------------------------------------------------------------------

    def webhook(self, event: str, status: str) -> None:
        """Emit a lifecycle event now; it is delivered in the background (or held, or lost)."""
        created_at_ns = time.time_ns()
        scenario = self.scenario
        copies = 1
        if scenario.duplicate_webhooks:
            copies = 3 if event == "call.completed" else 2
        delivery = WebhookDelivery(event, created_at_ns, copies=copies)
        self.outcome.webhooks.append(delivery)
        if self.config.webhook_url is None:
            return
        body = webhook_body(event, self.call, status, created_at_ns)
        if event == "call.completed" and scenario.lose_completed:
            delivery.withheld = True
            self.outcome.record("lifecycle", False, "call.completed withheld (fault: webhook lost)")
            return
        if scenario.reorder_webhooks and event != "call.completed":
            self.held.append((body, delivery))
            return
        self._spawn(self._deliver(body, delivery))

    def complete(self, status: str) -> None:
        """The call is over: `call.completed` with its final status."""
        self.outcome.final_status = status
        self.webhook("call.completed", status)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.in_flight.append(asyncio.create_task(coroutine))

    async def _deliver(self, body: dict[str, Any], delivery: WebhookDelivery) -> None:
        assert self.config.webhook_url is not None
        for _ in range(delivery.copies):
            await deliver(self.client, self.config.webhook_url, body, delivery, self.config.webhooks)
        note = f" ({delivery.copies} copies)" if delivery.copies > 1 else ""
        if delivery.delivered:
            self.outcome.record(
                "lifecycle", True, f"{delivery.event} delivered{note}, HTTP {delivery.last_status}"
            )
        else:
            attempts, error = delivery.attempts, delivery.last_error
            self.outcome.record(
                "lifecycle", False, f"{delivery.event} not acknowledged after {attempts} attempts: {error}"
            )

    async def finish_webhooks(self) -> None:
        """Wait for every delivery; held (reordered) webhooks go out after the rest."""
        try:
            await asyncio.gather(*self.in_flight)
            self.in_flight.clear()
            for body, delivery in reversed(self.held):
                await self._deliver(body, delivery)
            self.held.clear()
        finally:
            for task in self.in_flight:
                task.cancel()
            await asyncio.gather(*self.in_flight, return_exceptions=True)
