"""Tracer setup: env precedence, idempotence, host.name, the call-span helper, counted drops."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from collectors import counters, tracing
from collectors.identity import call_root_span_id, call_root_span_id_hex, call_trace_id, call_trace_id_hex
from collectors.tracing import (
    ConfigurationError,
    CountingBatchSpanProcessor,
    build_resource,
    configure,
    get_tracer,
    resolve_endpoints,
    start_call_span,
)
from tests.otlp_sink import OTLPSink, closed_port_endpoint

ENV_NAMES = (
    "CALLSCOPE_OTLP_ENDPOINTS",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_endpoint_precedence() -> None:
    env = {
        "CALLSCOPE_OTLP_ENDPOINTS": "http://a:4318/v1/traces, http://b:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://signal:4318/custom",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318/",
    }
    assert resolve_endpoints(["http://arg/v1/traces"], env) == ("http://arg/v1/traces",)
    assert resolve_endpoints([], env) == ()
    assert resolve_endpoints(None, env) == ("http://a:4318/v1/traces", "http://b:4318/v1/traces")
    del env["CALLSCOPE_OTLP_ENDPOINTS"]
    assert resolve_endpoints(None, env) == ("http://signal:4318/custom",)
    del env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    assert resolve_endpoints(None, env) == ("http://generic:4318/v1/traces",)
    assert resolve_endpoints(None, {}) == ("http://localhost:4318/v1/traces",)


def test_bad_endpoint_names_its_origin() -> None:
    with pytest.raises(ConfigurationError, match="CALLSCOPE_OTLP_ENDPOINTS: 'collector:4318'"):
        resolve_endpoints(None, {"CALLSCOPE_OTLP_ENDPOINTS": "collector:4318"})


def test_resource_precedence_and_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,service.name=from-attrs")
    assert build_resource().attributes["service.name"] == "from-attrs"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    resource = build_resource()
    assert resource.attributes["service.name"] == "from-env"
    assert resource.attributes["deployment.environment"] == "staging"
    assert resource.attributes["host.name"]
    assert build_resource("from-arg").attributes["service.name"] == "from-arg"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES")
    assert build_resource().attributes["service.name"] == "callscope-collector"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=pinned")
    assert build_resource().attributes["host.name"] == "pinned"


def test_configure_is_idempotent_and_last_configuration_wins() -> None:
    first = configure("svc-a", endpoints=[])
    assert configure("svc-a", endpoints=[]) is first
    assert tracing.default_provider() is first
    second = configure("svc-b", endpoints=[])
    assert second is not first
    assert tracing.default_provider() is second
    assert configure("svc-b", endpoints=[]) is second


def test_configure_exports_to_every_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with OTLPSink() as ingest, OTLPSink() as jaeger:
        monkeypatch.setenv("CALLSCOPE_OTLP_ENDPOINTS", f"{ingest.endpoint},{jaeger.endpoint}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "answer-app")
        provider = configure()
        span = start_call_span(get_tracer("answer_url"), "answer_url", "call_123", "answer_url")
        span.end()
        provider.force_flush()
        for sink in (ingest, jaeger):
            (row,) = sink.wait_for_spans(1)
            assert row["trace_id"] == call_trace_id_hex("call_123")
            assert row["parent_span_id"] == call_root_span_id_hex("call_123")
            assert row["service_name"] == "answer-app"
            assert row["resource_attributes"]["host.name"]
            assert row["call_id"] == "call_123"
            assert row["source"] == "answer_url"
        configure(endpoints=[])  # shut the exporters down before the sinks stop


def test_start_call_span_parents_on_the_call_root(memory_provider: TracerProvider, memory_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("webhook", memory_provider)
    span = start_call_span(
        tracer,
        "webhook",
        "call_123",
        "webhook",
        attributes={"minivoice.event": "call.completed"},
        start_time=1_000_000_000,
    )
    span.end(end_time=2_000_000_000)
    (finished,) = memory_exporter.get_finished_spans()
    assert format(finished.context.trace_id, "032x") == call_trace_id_hex("call_123")
    assert format(finished.parent.span_id, "016x") == call_root_span_id_hex("call_123")
    assert finished.context.trace_flags.sampled
    assert finished.kind is SpanKind.SERVER
    assert (finished.start_time, finished.end_time) == (1_000_000_000, 2_000_000_000)
    assert finished.attributes["minivoice.call_id"] == "call_123"
    assert finished.attributes["callscope.source"] == "webhook"
    assert finished.attributes["callscope.collector.version"] == tracing.COLLECTOR_VERSION
    assert finished.attributes["minivoice.event"] == "call.completed"


def test_start_call_span_uses_an_injected_clock(memory_provider: TracerProvider, memory_exporter) -> None:  # type: ignore[no-untyped-def]
    skewed = lambda: 42_000_000_000  # noqa: E731
    span = start_call_span(
        get_tracer("receiver", memory_provider), "stream.receiver", None, "receiver", clock=skewed
    )
    span.end(end_time=skewed() + 1)
    (finished,) = memory_exporter.get_finished_spans()
    assert finished.start_time == 42_000_000_000
    assert "minivoice.call_id" not in finished.attributes
    assert finished.parent is None


def test_closed_port_counts_drops_and_never_blocks_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    before = counters.stats()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(
        CountingBatchSpanProcessor(
            OTLPSpanExporter(endpoint=closed_port_endpoint(), timeout=0.5),
            max_queue_size=4,
            max_export_batch_size=2,
            schedule_delay_millis=10,
        )
    )
    tracer = get_tracer("answer_url", provider)
    with caplog.at_level(logging.CRITICAL):
        for index in range(40):
            start_call_span(tracer, "answer_url", f"call_{index}", "answer_url").end()
        provider.shutdown()
    after = counters.stats()
    ended = after["spans_ended"] - before["spans_ended"]
    assert ended == 40
    assert after["spans_exported"] == before["spans_exported"]
    dropped = after["spans_dropped"] - before["spans_dropped"]
    assert after["spans_dropped_queue_full"] > before["spans_dropped_queue_full"]
    assert after["export_failures"] > before["export_failures"]
    assert dropped == 40, after


def test_guard_counts_and_swallows_only_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    before = counters.stats()["internal_errors"]
    with caplog.at_level(logging.ERROR, logger="callscope.collectors"):
        for _ in range(3):
            with counters.guard("test.guard"):
                raise ZeroDivisionError("collector bug")
    assert counters.stats()["internal_errors"] == before + 3
    assert sum("test.guard" in r.getMessage() for r in caplog.records) == 1  # logged once
    with pytest.raises(KeyboardInterrupt), counters.guard("test.guard"):
        raise KeyboardInterrupt

    @counters.guarded("test.guarded", default="fallback")
    def broken() -> str:
        raise ValueError("bug")

    assert broken() == "fallback"


def test_a_collector_span_never_takes_the_hosts_current_span_as_parent(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    """A host app traced with its own OpenTelemetry setup: its active span is the parent of
    neither a call's span (the call root is) nor a span without a call id (a trace of its own)."""
    host = TracerProvider(shutdown_on_exit=False)
    with host.get_tracer("host-app").start_as_current_span("host request") as host_span:
        tracer = get_tracer("answer_url", memory_provider)
        start_call_span(tracer, "answer_url", "call_123", "answer_url").end()
        start_call_span(tracer, "answer_url", None, "answer_url").end()
    with_call, without_call = memory_exporter.get_finished_spans()
    host_context = host_span.get_span_context()
    assert with_call.parent is not None and with_call.parent.span_id == call_root_span_id("call_123")
    assert with_call.context.trace_id == call_trace_id("call_123")
    assert without_call.parent is None
    assert without_call.context.trace_id != host_context.trace_id
    host.shutdown()
