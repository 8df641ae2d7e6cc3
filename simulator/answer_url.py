"""The platform's answer_url request, and MiniVoice's verdict on the actions it returns.

MiniVoice POSTs the call to the answer_url and waits a bounded time (assumed 5 s by default).
A timeout, a transport error, a non-2xx status or a non-JSON body is an answer_url failure.
Otherwise the actions are validated with the collectors' own validator
(`collectors.actions.check_actions`), so "valid" means the same thing everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from collectors.actions import ACCEPTED_RESULT, ActionCheck, check_actions
from simulator.messages import CALL_ID_HEADER, CallInfo, answer_url_body

MAX_BODY_BYTES = 1024 * 1024
"""Larger answer_url responses are cut here; no legitimate action list comes close."""


@dataclass(frozen=True, slots=True)
class AnswerUrlResult:
    """What came back from the answer_url, and what MiniVoice made of it."""

    status: int | None
    latency_ms: float
    body: bytes = b""
    error: str | None = None
    """Transport failure or timeout, in words; None when an HTTP response arrived in time."""
    check: ActionCheck | None = None
    """The validator's reading of the body; None when there is no usable body."""

    @property
    def failed(self) -> bool:
        """The answer_url itself failed: timeout, transport error, non-2xx or non-JSON."""
        if self.error is not None or self.status is None or not 200 <= self.status < 300:
            return True
        return self.check is None or not self.check.is_json

    @property
    def failure(self) -> str | None:
        """Why the answer_url failed, in words, or None."""
        if self.error is not None:
            return self.error
        if self.status is None or not 200 <= self.status < 300:
            return f"answer_url answered HTTP {self.status}"
        if self.check is None or not self.check.is_json:
            return "answer_url response is not JSON"
        return None


def action_result(check: ActionCheck) -> dict[str, Any]:
    """MiniVoice's answer to the actions: the doc's accepted result, or the problems."""
    if check.valid:
        return {"result": ACCEPTED_RESULT}
    return {
        "result": "actions rejected",
        "problems": [problem.as_dict() for problem in check.problems],
    }


def _describe_error(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"answer_url did not answer within {timeout_s * 1000:.0f} ms"
    cause = exc.__cause__ or exc.__context__
    detail = str(cause or exc) or type(exc).__name__
    return f"answer_url request failed: {detail}"


async def fetch_actions(
    client: httpx.AsyncClient,
    url: str,
    call: CallInfo,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    now_ns: int | None = None,
) -> AnswerUrlResult:
    """POST the call to the answer_url and read the actions, within `timeout_s` overall."""
    body = answer_url_body(call, now_ns if now_ns is not None else time.time_ns())
    request_headers = {CALL_ID_HEADER: call.call_id, **(headers or {})}
    started = time.perf_counter()
    try:
        # An overall deadline: httpx's timeouts are per read, and a slow drip of bytes evades them.
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST", url, json=body, headers=request_headers, timeout=timeout_s
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= MAX_BODY_BYTES:
                        break
                raw = b"".join(chunks)[:MAX_BODY_BYTES]
                status = response.status_code
    except (httpx.HTTPError, TimeoutError) as exc:
        latency = (time.perf_counter() - started) * 1000
        return AnswerUrlResult(status=None, latency_ms=latency, error=_describe_error(exc, timeout_s))
    latency = (time.perf_counter() - started) * 1000
    check = check_actions(raw) if 200 <= status < 300 else None
    return AnswerUrlResult(status=status, latency_ms=latency, body=raw, check=check)


def body_preview(body: bytes, limit: int = 200) -> str:
    """The start of a response body for display: decoded leniently, one line."""
    text = body[:limit].decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError):
        text = json.dumps(json.loads(body), separators=(",", ":"))[:limit]
    return " ".join(text.split()) + ("..." if len(body) > limit else "")
