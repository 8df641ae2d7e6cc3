"""Tracer setup for the collectors, and the helper that starts a span in a call's trace.

`configure()` builds one SDK `TracerProvider` with one `BatchSpanProcessor` + OTLP/HTTP exporter
per traces endpoint. The SDK already reads the OTEL_* variables (OTEL_BSP_*, exporter headers,
timeout, compression, certificates, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME); this module
only adds what the SDK does not do: the callscope endpoint list, `host.name`, counted drops.

Endpoint precedence (explicit argument > signal-specific env > generic env > default):

1. `endpoints=[...]` argument (an empty list means: export nothing; spans still reach the logs);
2. `CALLSCOPE_OTLP_ENDPOINTS` (comma-separated traces URLs, e.g. callscope ingest and Jaeger);
3. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is);
4. `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`;
5. `http://localhost:4318/v1/traces`.

Service name: `service_name` argument > `OTEL_SERVICE_NAME` > `service.name` in
`OTEL_RESOURCE_ATTRIBUTES` > `callscope-collector`.

The provider is callscope's own: `configure()` does not replace the OTel global provider, so a
host app that already uses OpenTelemetry keeps its setup, and callscope spans go where
callscope is told to send them.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import HOST_NAME, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Tracer

from collectors import counters
from collectors.identity import call_parent

logger = logging.getLogger("callscope.collectors")

COLLECTOR_VERSION = "0.1.0"
"""Reported as `callscope.collector.version` on every collector span and as the tracer version."""

CALLSCOPE_OTLP_ENDPOINTS = "CALLSCOPE_OTLP_ENDPOINTS"
"""Comma-separated OTLP/HTTP traces endpoints; one batch processor and exporter each."""

OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
"""Standard OTel variable: the traces endpoint, used as is."""

OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Standard OTel variable: base URL; `/v1/traces` is appended."""

OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
"""Standard OTel variable: the `service.name` resource attribute."""

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE_NAME = "callscope-collector"

CALL_ID = "minivoice.call_id"
SOURCE = "callscope.source"
VERSION = "callscope.collector.version"

Clock = Callable[[], int]
"""Returns the current time in unix-epoch nanoseconds (injectable for skewed-clock scenarios)."""


class ConfigurationError(ValueError):
    """A collector setting is unusable; the message names the variable or argument."""


def resolve_endpoints(
    endpoints: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The traces endpoints `configure` would export to, by the documented precedence."""
    env = os.environ if environ is None else environ
    if endpoints is not None:
        resolved = tuple(e.strip() for e in endpoints if e.strip())
        origin = "endpoints argument"
    elif env.get(CALLSCOPE_OTLP_ENDPOINTS, "").strip():
        resolved = tuple(p.strip() for p in env[CALLSCOPE_OTLP_ENDPOINTS].split(",") if p.strip())
        origin = CALLSCOPE_OTLP_ENDPOINTS
    elif env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "").strip():
        resolved = (env[OTEL_EXPORTER_OTLP_TRACES_ENDPOINT].strip(),)
        origin = OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    elif env.get(OTEL_EXPORTER_OTLP_ENDPOINT, "").strip():
        resolved = (env[OTEL_EXPORTER_OTLP_ENDPOINT].strip().removesuffix("/") + "/v1/traces",)
        origin = OTEL_EXPORTER_OTLP_ENDPOINT
    else:
        return (DEFAULT_ENDPOINT,)
    for endpoint in resolved:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(f"{origin}: {endpoint!r} is not an http(s) URL")
    return resolved


def build_resource(service_name: str | None = None) -> Resource:
    """The collector resource: OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (via the SDK), plus
    `host.name` (Jaeger's clock-skew adjuster needs a host identity) and a default service name."""
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else None)
    defaults: dict[str, str] = {}
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        defaults[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    if not resource.attributes.get(HOST_NAME):
        defaults[HOST_NAME] = socket.gethostname()
    return resource.merge(Resource(defaults)) if defaults else resource


class CountingSpanExporter(SpanExporter):
    """Wraps an exporter and counts what it delivered and what it gave up on."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception as exc:  # an exporter bug is a failed export, not a crash
            counters.internal_error("exporter", exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            counters.count(counters.SPANS_EXPORTED, len(spans))
        else:
            counters.count(counters.EXPORT_FAILURES)
            counters.count(counters.SPANS_DROPPED_EXPORT_FAILED, len(spans))
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _DropCounter:
    """Stands in for the SDK batch processor's internal metrics so queue-full drops get counted.

    The SDK reports drops only through its (opt-in) internal metrics. We chain in front of
    whatever metrics object it built, so its own metrics keep working when enabled.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        self.inner.register_queue_size(get_queue_size)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        if error_type == "already_shutdown":
            counters.count(counters.SPANS_DROPPED_SHUTDOWN, count)
        else:
            counters.count(counters.SPANS_DROPPED_QUEUE_FULL, count)
        self.inner.drop_items(count, error_type)

    def finish_items(self, count: int) -> None:
        self.inner.finish_items(count)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor (OTEL_BSP_* honoured), with every drop counted.

    Exports go through `CountingSpanExporter`; queue-full drops are counted by hooking the
    SDK's processor metrics. That hook touches an SDK internal: if a future SDK renames it,
    queue-full drops are simply not counted (export failures still are) and a warning says so.
    """

    def __init__(self, exporter: SpanExporter, **kwargs: Any) -> None:
        super().__init__(CountingSpanExporter(exporter), **kwargs)
        inner = getattr(self._batch_processor, "_metrics", None)
        if inner is not None and hasattr(inner, "drop_items"):
            self._batch_processor._metrics = _DropCounter(inner)
        else:
            counters.log_once(
                "bsp-hook",
                "callscope: this opentelemetry-sdk version hides its batch queue; "
                "queue-full drops will not be counted",
            )

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            counters.count(counters.SPANS_ENDED)
        super().on_end(span)


def otlp_processor(endpoint: str, *, timeout: float | None = None) -> SpanProcessor:
    """A counting batch processor with an OTLP/HTTP exporter for one traces endpoint.

    `timeout` (seconds per export, retries included) defaults to OTEL_EXPORTER_OTLP_TIMEOUT / 10 s.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return CountingBatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=timeout))


@dataclass(frozen=True, slots=True)
class _Configured:
    key: tuple[object, ...]
    provider: TracerProvider


class _State:
    """The process-wide configuration (one per process, like the OTel SDK's global provider)."""

    lock = threading.Lock()
    current: _Configured | None = None
    atexit_registered = False


def _shutdown_current() -> None:
    with _State.lock:
        current = _State.current
    if current is not None:
        current.provider.shutdown()


def configure(service_name: str | None = None, endpoints: list[str] | None = None) -> TracerProvider:
    """Set up (once) the tracer provider every collector uses unless given its own.

    Idempotent: calls that resolve to the same service name, resource and endpoints return the
    same provider. A call that resolves differently replaces it (last configuration wins): the
    new provider becomes the collectors' default, and the old one is flushed and shut down, so
    no span is exported twice and no exporter thread leaks. Collectors look the default up per
    span, so they follow the change.

    Raises `ConfigurationError` for an endpoint that is not an http(s) URL (at setup, never
    per request).
    """
    resolved = resolve_endpoints(endpoints)
    resource = build_resource(service_name)
    key = (tuple(sorted((k, str(v)) for k, v in resource.attributes.items())), resolved)
    with _State.lock:
        if _State.current is not None and _State.current.key == key:
            return _State.current.provider
        previous = _State.current
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for endpoint in resolved:
            provider.add_span_processor(otlp_processor(endpoint))
        _State.current = _Configured(key, provider)
        if not _State.atexit_registered:
            atexit.register(_shutdown_current)
            _State.atexit_registered = True
    if previous is not None:
        previous.provider.shutdown()
    logger.info("callscope collectors export to %s", ", ".join(resolved) or "(nowhere: logs only)")
    return provider


def default_provider() -> TracerProvider:
    """The provider from the last `configure()`; configures from the environment on first use."""
    current = _State.current
    return current.provider if current is not None else configure()


def get_tracer(source: str, tracer_provider: trace.TracerProvider | None = None) -> Tracer:
    """The tracer for one collector source (`answer_url`, `receiver`, `webhook`).

    `tracer_provider=None` means callscope's default provider (see `configure`).
    """
    provider = tracer_provider if tracer_provider is not None else default_provider()
    return provider.get_tracer(f"callscope.collectors.{source}", COLLECTOR_VERSION)


class TracerSource:
    """Resolves a collector's tracer lazily: a fixed provider, or the current default one.

    Collectors hold one of these instead of a tracer so that a later `configure()` call is
    followed without restarting the host app.
    """

    __slots__ = ("_cached", "_provider", "source")

    def __init__(self, source: str, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.source = source
        self._provider = tracer_provider
        self._cached: tuple[object, Tracer] | None = None

    def tracer(self) -> Tracer:
        """The tracer to use now."""
        provider = self._provider if self._provider is not None else default_provider()
        cached = self._cached
        if cached is not None and cached[0] is provider:
            return cached[1]
        tracer = provider.get_tracer(f"callscope.collectors.{self.source}", COLLECTOR_VERSION)
        self._cached = (provider, tracer)
        return tracer


def start_call_span(
    tracer: Tracer,
    name: str,
    call_id: str | None,
    source: str,
    *,
    kind: SpanKind = SpanKind.SERVER,
    attributes: Mapping[str, Any] | None = None,
    start_time: int | None = None,
    clock: Clock | None = None,
) -> Span:
    """Start a collector span as a child of the call's derived root span.

    Sets `minivoice.call_id`, `callscope.source` and `callscope.collector.version`. Without a
    call id the span starts its own trace and carries no `minivoice.call_id` (the pipeline
    counts such spans). `start_time` (ns) wins over `clock`; both default to the wall clock.
    The caller ends the span, with `span.end(end_time=...)` when the time is not now.

    The parent comes from the call id alone, never from the ambient context: a host app's own
    current span (in its own tracing) is not the parent of a collector span.
    """
    context = trace.set_span_in_context(call_parent(call_id), Context()) if call_id else Context()
    base: dict[str, Any] = {SOURCE: source, VERSION: COLLECTOR_VERSION}
    if call_id:
        base[CALL_ID] = call_id
    if attributes:
        base.update(attributes)
    if start_time is None and clock is not None:
        start_time = clock()
    return tracer.start_span(name, context=context, kind=kind, attributes=base, start_time=start_time)


def set_call_id(span: Span, call_id: str) -> None:
    """Attach a call id learned after the span started (e.g. from a stream's `start` message).

    The trace id cannot change after start, so collectors that learn the call id late should
    start the span then, or use explicit start times; this only sets the attribute.
    """
    span.set_attribute(CALL_ID, call_id)


def now_ns(clock: Clock | None = None) -> int:
    """`clock()` if given, else the wall clock, in unix-epoch nanoseconds."""
    return clock() if clock is not None else time.time_ns()
