"""Shared fixtures: a real OTLP/HTTP sink on loopback and tracer providers that export to it.

- `otlp_sink`: an `OTLPSink` (tests/otlp_sink.py) running under uvicorn; `.endpoint`, `.rows()`,
  `.spans(name)`, `.wait_for_spans(n, name, flush=provider.force_flush)`.
- `otlp_provider`: an SDK TracerProvider whose real OTLPSpanExporter sends to `otlp_sink`
  (counting batch processor, short schedule delay). Shut down after the test.
- `memory_exporter` / `memory_provider`: an InMemorySpanExporter behind a SimpleSpanProcessor,
  for tests that do not need the wire.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.otlp_sink import OTLPSink

TEST_RESOURCE = Resource.create({"service.name": "callscope-test", "host.name": "test-host"})


@pytest.fixture
def otlp_sink() -> Iterator[OTLPSink]:
    """A real OTLP/HTTP traces receiver on 127.0.0.1 and a free port."""
    with OTLPSink() as sink:
        yield sink


@pytest.fixture
def otlp_provider(otlp_sink: OTLPSink) -> Iterator[TracerProvider]:
    """A TracerProvider exporting through the real OTLP/HTTP exporter to `otlp_sink`."""
    from collectors.tracing import CountingBatchSpanProcessor

    provider = TracerProvider(resource=TEST_RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(
        CountingBatchSpanProcessor(
            OTLPSpanExporter(endpoint=otlp_sink.endpoint, timeout=5), schedule_delay_millis=50
        )
    )
    yield provider
    provider.shutdown()


@pytest.fixture
def memory_exporter() -> InMemorySpanExporter:
    """An in-memory exporter; read spans with `.get_finished_spans()`."""
    return InMemorySpanExporter()


@pytest.fixture
def memory_provider(memory_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A TracerProvider that hands each finished span to `memory_exporter` synchronously."""
    provider = TracerProvider(resource=TEST_RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory_exporter))
    yield provider
    provider.shutdown()
