"""The OpenTelemetry Collector's load-balancing exporter, routing by trace id, in Python.

A port of `exporter/loadbalancingexporter/consistent_hashing.go` (opentelemetry-collector-contrib):
each backend gets 100 positions on a ring of 36,000, at `crc32(endpoint + byte(i)) % 36000`;
a trace goes to the first position at or after `crc32(trace_id_bytes) % 36000`, wrapping
around. The test vectors of the Go tests are checked in tests/deploy/test_scale_out.py.

`LoadBalancingSpanExporter` does what the exporter does with `routing_key: traceID`: split each
batch by trace id and hand each trace's spans to the exporter of the backend the ring names.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

MAX_POSITIONS = 36_000  # 360 degrees with two decimals
DEFAULT_WEIGHT = 100  # positions per backend


@dataclass(frozen=True, slots=True)
class RingItem:
    position: int
    endpoint: str


def positions_for(endpoint: str, points: int) -> list[int]:
    """The ring positions of one backend (Go: positionsFor)."""
    encoded = endpoint.encode()
    return [zlib.crc32(encoded + bytes([i % 256])) % MAX_POSITIONS for i in range(points)]


def positions_for_endpoints(endpoints: Sequence[str], weight: int = DEFAULT_WEIGHT) -> list[RingItem]:
    """Every backend's positions, sorted; a position already taken is skipped (Go: positionsForEndpoints)."""
    taken: set[int] = set()
    items = []
    for endpoint in endpoints:
        for position in positions_for(endpoint, weight):
            if position in taken:
                continue
            taken.add(position)
            items.append(RingItem(position, endpoint))
    return sorted(items, key=lambda item: item.position)


def _bsearch(position: int, left: Sequence[RingItem], right: Sequence[RingItem]) -> RingItem:
    """The closest item at or after `position` (Go: bsearch, kept structurally identical)."""
    if left[-1].position == position:
        return left[-1]
    if right[0].position == position:
        return right[0]
    if position > right[-1].position:
        return left[0]
    if position > left[-1].position:
        if len(right) == 1:
            return right[0]
        half = len(right) // 2
        return _bsearch(position, right[:half], right[half:])
    if len(left) == 1:
        return left[0]
    half = len(left) // 2
    return _bsearch(position, left[:half], left[half:])


class HashRing:
    """An immutable consistent-hash ring over backend endpoints (Go: hashRing)."""

    def __init__(self, endpoints: Sequence[str], weight: int = DEFAULT_WEIGHT) -> None:
        self.items = positions_for_endpoints(endpoints, weight)

    def find_endpoint(self, position: int) -> str:
        half = len(self.items) // 2
        return _bsearch(position, self.items[:half], self.items[half:]).endpoint

    def endpoint_for(self, identifier: bytes) -> str:
        """The backend for a routing key: the 16 trace id bytes for `routing_key: traceID`."""
        return self.find_endpoint(zlib.crc32(identifier) % MAX_POSITIONS)


class LoadBalancingSpanExporter(SpanExporter):
    """Route each span to one backend exporter by its trace id, as `routing_key: traceID` does."""

    def __init__(self, backends: Mapping[str, SpanExporter]) -> None:
        self.backends = dict(backends)
        self.ring = HashRing(list(self.backends))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        by_endpoint: dict[str, list[ReadableSpan]] = {}
        for span in spans:
            trace_id = span.context.trace_id.to_bytes(16, "big")
            by_endpoint.setdefault(self.ring.endpoint_for(trace_id), []).append(span)
        results = [self.backends[endpoint].export(batch) for endpoint, batch in by_endpoint.items()]
        ok = all(result is SpanExportResult.SUCCESS for result in results)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        for exporter in self.backends.values():
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(exporter.force_flush(timeout_millis) for exporter in self.backends.values())
