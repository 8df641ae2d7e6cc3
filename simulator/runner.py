"""Many simulated calls at once, with bounded concurrency.

Calls start as slots free up (at most `concurrency` in flight), like a steady flow of traffic
rather than one burst. Outcomes come back in the order the calls were planned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from simulator.outcome import CallOutcome, Observer
from simulator.platform import Platform, new_call_id
from simulator.scenarios import Scenario


async def run_calls(
    platform: Platform,
    scenarios: Sequence[Scenario],
    *,
    concurrency: int = 32,
    call_ids: Sequence[str] | None = None,
    observer: Observer | None = None,
    on_done: Callable[[CallOutcome], None] | None = None,
) -> list[CallOutcome]:
    """Place one call per scenario, at most `concurrency` at a time; outcomes in input order."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if call_ids is not None and len(call_ids) != len(scenarios):
        raise ValueError("call_ids and scenarios must have the same length")
    ids = list(call_ids) if call_ids is not None else [new_call_id() for _ in scenarios]
    slots = asyncio.Semaphore(concurrency)

    async def one(scenario: Scenario, call_id: str) -> CallOutcome:
        async with slots:
            outcome = await platform.place_call(scenario, call_id, observer)
        if on_done is not None:
            on_done(outcome)
        return outcome

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(s, i)) for s, i in zip(scenarios, ids, strict=True)]
    return [task.result() for task in tasks]
