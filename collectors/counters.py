"""Counted figures and self-protection: telemetry never crashes the program it observes.

Every collector failure mode ends up as a number a user can read with `collectors.stats()`:
spans the exporter delivered, spans dropped (queue full, export failed), bugs in collector
code caught by `guard`, webhook callbacks that failed. Nothing here raises into the host app.

The counters are process-wide (one set per process, like the OTel SDK's own globals) and
thread-safe: the OTel batch worker, request threads and event loops all update them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

logger = logging.getLogger("callscope.collectors")

SPANS_ENDED = "spans_ended"
"""Collector spans handed to the export pipeline (sampled spans only, counted once per endpoint)."""
SPANS_EXPORTED = "spans_exported"
"""Spans an OTLP endpoint accepted (counted once per endpoint)."""
SPANS_DROPPED_QUEUE_FULL = "spans_dropped_queue_full"
"""Spans dropped because the batch queue was full (exporter slower than traffic, or down)."""
SPANS_DROPPED_EXPORT_FAILED = "spans_dropped_export_failed"
"""Spans in a batch the exporter gave up on (endpoint down, 4xx, retries exhausted)."""
SPANS_DROPPED_SHUTDOWN = "spans_dropped_shutdown"
"""Spans ended after their provider was shut down."""
EXPORT_FAILURES = "export_failures"
"""Export calls (batches) that failed."""
INTERNAL_ERRORS = "internal_errors"
"""Exceptions raised by collector code itself, caught by `guard` and never seen by the host app."""
WEBHOOK_CALLBACK_FAILURES = "webhook_callback_failures"
"""`on_event` callbacks that raised."""
WEBHOOK_CALLBACKS_DROPPED = "webhook_callbacks_dropped"
"""Webhook deliveries not passed to `on_event` because the callback queue was full."""
WEBHOOK_REJECTED = "webhook_rejected"
"""Webhook deliveries answered 4xx (malformed, no call id, too large, too slow)."""
ANSWER_URL_BODY_OVER_LIMIT = "answer_url_body_over_limit"
"""answer_url responses larger than the validation cap (validated as truncated, see answer_url.py)."""
LOG_LINES = "log_lines"
"""JSON log lines written by the per-source loggers."""

KNOWN_COUNTERS = (
    SPANS_ENDED,
    SPANS_EXPORTED,
    SPANS_DROPPED_QUEUE_FULL,
    SPANS_DROPPED_EXPORT_FAILED,
    SPANS_DROPPED_SHUTDOWN,
    EXPORT_FAILURES,
    INTERNAL_ERRORS,
    WEBHOOK_CALLBACK_FAILURES,
    WEBHOOK_CALLBACKS_DROPPED,
    WEBHOOK_REJECTED,
    ANSWER_URL_BODY_OVER_LIMIT,
    LOG_LINES,
)

_lock = threading.Lock()
_counts: dict[str, int] = dict.fromkeys(KNOWN_COUNTERS, 0)
_logged_once: set[tuple[str, str]] = set()


def count(name: str, n: int = 1) -> None:
    """Add `n` to the counter `name` (created on first use, so other collectors may add their own)."""
    with _lock:
        _counts[name] = _counts.get(name, 0) + n


def stats() -> dict[str, int]:
    """A snapshot of every collector counter in this process.

    Keys are the constants of this module (`spans_exported`, `spans_dropped_queue_full`,
    `internal_errors`, ...) plus any a collector added. `spans_dropped` is the sum of all drops.
    """
    with _lock:
        snapshot = dict(_counts)
    snapshot["spans_dropped"] = (
        snapshot.get(SPANS_DROPPED_QUEUE_FULL, 0)
        + snapshot.get(SPANS_DROPPED_EXPORT_FAILED, 0)
        + snapshot.get(SPANS_DROPPED_SHUTDOWN, 0)
    )
    return snapshot


def log_once(key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Log `message` the first time `key` is seen in this process, never again."""
    with _lock:
        if ("once", key) in _logged_once:
            return
        _logged_once.add(("once", key))
    logger.log(level, message, *args)


def internal_error(what: str, exc: BaseException) -> None:
    """Count a bug in collector code and log it once per (place, exception type), with traceback."""
    count(INTERNAL_ERRORS)
    key = (what, type(exc).__name__)
    with _lock:
        first = key not in _logged_once
        _logged_once.add(key)
    if first:
        logger.error(
            "callscope collector error in %s (counted in stats()['internal_errors']; "
            "later errors of this kind are counted, not logged)",
            what,
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def failed(what: str, exc: BaseException) -> None:
    """What `guard` does with an exception, for hot paths that catch it themselves (an inline
    `try`/`except Exception` costs less than entering a `guard`): count it, log it once, never raise."""
    with contextlib.suppress(Exception):
        internal_error(what, exc)


class guard:  # lower-case: reads like a keyword, `with guard("answer_url.record"):`
    """Context manager: an `Exception` inside is counted and logged once, never propagated.

    Wrap collector code only, never the host app's own code: the app's exceptions must reach
    the app unchanged. `BaseException`s that are not `Exception` (cancellation, KeyboardInterrupt)
    pass through, because swallowing them would change the host's control flow.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        # even counting and logging must not raise into the host
        with contextlib.suppress(Exception):
            internal_error(self.what, exc)
        return True


P = ParamSpec("P")
R = TypeVar("R")


def guarded(what: str, default: R) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator form of `guard`: on an exception, count it and return `default`."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with guard(what):
                return function(*args, **kwargs)
            return default

        return wrapper

    return decorate
