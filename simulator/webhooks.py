"""Webhook delivery as MiniVoice does it (assumed): at least once, retried with backoff.

A delivery that gets no 2xx (an error status, a refused connection, a timeout) is retried
after `backoff_s`, then twice that, and so on up to `max_backoff_s`, for `retries` more
attempts. The platform's delivery faults (loss, duplicates, reordering) are decided by the
call flow in `simulator.platform`; this module only sends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from simulator.outcome import WebhookDelivery


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """Retry policy and timeout for webhook deliveries."""

    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    timeout_s: float = 5.0


def backoff_delays(options: WebhookOptions) -> list[float]:
    """The waits between attempts: exponential from `backoff_s`, capped at `max_backoff_s`."""
    return [min(options.backoff_s * 2**n, options.max_backoff_s) for n in range(options.retries)]


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    delivery: WebhookDelivery,
    options: WebhookOptions,
) -> bool:
    """Send one copy of a webhook until a 2xx or the retries run out. Returns True if acknowledged."""
    delays = backoff_delays(options)
    for attempt in range(options.retries + 1):
        delivery.attempts += 1
        try:
            response = await client.post(url, json=body, timeout=options.timeout_s)
        except httpx.HTTPError as exc:
            delivery.last_status = None
            delivery.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            delivery.last_status = response.status_code
            if 200 <= response.status_code < 300:
                delivery.delivered += 1
                delivery.last_error = None
                return True
            delivery.last_error = f"HTTP {response.status_code}"
        if attempt < len(delays):
            await asyncio.sleep(delays[attempt])
    return False
