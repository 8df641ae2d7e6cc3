"""The webhook collector: parser, recent-set, and real deliveries over uvicorn with OTLP export."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from collectors import counters
from collectors.identity import call_root_span_id_hex, call_trace_id_hex
from collectors.privacy import hash_phone
from collectors.webhooks import (
    RecentDeliveries,
    Webhook,
    WebhookCollector,
    WebhookMiddleware,
    WebhookProblem,
    parse_webhook,
)
from tests.otlp_sink import OTLPSink, UvicornThread

KEY = b"webhook-key"
COMPLETED = {
    "event": "call.completed",
    "created_at": "2026-05-29T12:10:00Z",
    "call": {
        "id": "call_123",
        "customer_id": "cust_123",
        "application_id": "app_123",
        "status": "completed",
        "direction": "outbound",
        "from": "+15551230001",
        "to": "+15551230002",
    },
    "variables": {},
    "data": {},
}
CREATED_AT_NS = 1_780_056_600_000_000_000


def test_parse_the_documented_webhook() -> None:
    webhook = parse_webhook(json.dumps(COMPLETED).encode())
    assert isinstance(webhook, Webhook)
    assert (webhook.event, webhook.call_id, webhook.status, webhook.direction) == (
        "call.completed",
        "call_123",
        "completed",
        "outbound",
    )
    assert (webhook.customer_id, webhook.application_id) == ("cust_123", "app_123")
    assert webhook.created_at == "2026-05-29T12:10:00Z"
    assert webhook.created_at_unix_nano == CREATED_AT_NS
    assert webhook.document == COMPLETED
    assert "5551230001" not in repr(webhook)  # numbers stay out of reprs (and so out of tracebacks)


@pytest.mark.parametrize(
    ("body", "code", "call_id"),
    [
        (b"{not json", "not_json", None),
        (b"\xff\xfe", "not_json", None),
        (b"[1, 2]", "not_an_object", None),
        (b'{"call": {"id": "call_9"}}', "missing_event", "call_9"),
        (b'{"event": "call.completed", "call": {}}', "missing_call_id", None),
        (b'{"event": "call.completed", "call": "call_9"}', "missing_call_id", None),
        (b'{"event": "call.completed", "call": {"id": {"nested": 1}}}', "missing_call_id", None),
        (b"[" * 100_000, "not_json", None),
    ],
)
def test_parse_problems(body: bytes, code: str, call_id: str | None) -> None:
    problem = parse_webhook(body)
    assert isinstance(problem, WebhookProblem)
    assert problem.code == code
    assert problem.call_id == call_id
    assert problem.message


def test_unparseable_created_at_is_kept_as_sent() -> None:
    webhook = parse_webhook(b'{"event": "call.ringing", "created_at": "yesterday", "call": {"id": 42}}')
    assert isinstance(webhook, Webhook)
    assert webhook.call_id == "42"
    assert webhook.created_at == "yesterday"
    assert webhook.created_at_unix_nano is None


@given(st.one_of(st.binary(), st.text(), st.recursive(st.none() | st.text() | st.integers(), st.lists)))
def test_parse_webhook_never_raises(value: Any) -> None:
    body = value if isinstance(value, bytes | str) else json.dumps(value)
    assert isinstance(parse_webhook(body), Webhook | WebhookProblem)


def test_recent_deliveries_are_bounded_and_expire() -> None:
    recent = RecentDeliveries(max_items=2, ttl=10)
    assert not recent.seen(("call.completed", "a"), now=0)
    assert recent.seen(("call.completed", "a"), now=5)
    assert not recent.seen(("call.answered", "a"), now=5)
    assert not recent.seen(("call.completed", "b"), now=6)  # evicts the oldest
    assert len(recent) == 2
    assert not recent.seen(("call.completed", "a"), now=7)
    assert not recent.seen(("call.completed", "b"), now=100)  # expired


@pytest.fixture
def collector_server(
    memory_provider: TracerProvider,
) -> Iterator[tuple[str, WebhookCollector, list[Webhook]]]:
    received: list[Webhook] = []
    collector = WebhookCollector(
        received.append, tracer_provider=memory_provider, pii_key=KEY, max_body_bytes=4096
    )
    with UvicornThread(collector) as server:
        yield server.url, collector, received
    collector.close()


def test_delivery_is_acked_and_exported(otlp_sink: OTLPSink, otlp_provider: TracerProvider) -> None:
    received: list[Webhook] = []
    collector = WebhookCollector(received.append, tracer_provider=otlp_provider, pii_key=KEY)
    with UvicornThread(collector) as server, httpx.Client() as client:
        first = client.post(f"{server.url}/", json=COMPLETED)
        again = client.post(f"{server.url}/", json=COMPLETED)
    collector.close()
    assert (first.status_code, first.json()) == (200, {"received": True, "duplicate": False})
    assert again.json() == {"received": True, "duplicate": True}
    assert [w.duplicate for w in received] == [False, True]
    rows = otlp_sink.wait_for_spans(2, "webhook", flush=otlp_provider.force_flush)
    assert len(rows) == 2
    row = rows[0]
    assert row["kind"] == "SERVER"
    assert row["trace_id"] == call_trace_id_hex("call_123")
    assert row["parent_span_id"] == call_root_span_id_hex("call_123")
    assert (row["call_id"], row["source"], row["status_code"]) == ("call_123", "webhook", "UNSET")
    attrs = row["attributes"]
    assert attrs["minivoice.event"] == "call.completed"
    assert attrs["minivoice.webhook.created_at"] == "2026-05-29T12:10:00Z"
    assert attrs["minivoice.webhook.created_at_unix_nano"] == CREATED_AT_NS
    assert attrs["minivoice.call.status"] == "completed"
    assert attrs["minivoice.direction"] == "outbound"
    assert attrs["minivoice.customer_id"] == "cust_123"
    assert attrs["minivoice.application_id"] == "app_123"
    assert attrs["minivoice.from.masked"] == "+1555***0001"
    assert attrs["minivoice.to.hash"] == hash_phone("+15551230002", KEY)
    assert attrs["minivoice.webhook.duplicate"] is False
    assert rows[1]["attributes"]["minivoice.webhook.duplicate"] is True
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["client.address"] == "127.0.0.1"
    text = json.dumps(rows, default=str)
    assert "5551230001" not in text and "5551230002" not in text


def test_malformed_deliveries_get_400_and_error_spans(
    collector_server: tuple[str, WebhookCollector, list[Webhook]], memory_exporter: InMemorySpanExporter
) -> None:
    url, _, received = collector_server
    before = counters.stats()["webhook_rejected"]
    with httpx.Client() as client:
        not_json = client.post(url, content=b"{oops")
        no_event = client.post(url, json={"call": {"id": "call_7"}})
        no_call = client.post(url, json={"event": "call.completed"})
        wrong_method = client.get(url)
    assert not_json.status_code == 400
    assert not_json.json()["error"] == "not_json"
    assert "not JSON" in not_json.json()["message"]
    assert (no_event.status_code, no_event.json()["error"]) == (400, "missing_event")
    assert (no_call.status_code, no_call.json()["error"]) == (400, "missing_call_id")
    assert wrong_method.status_code == 405
    assert counters.stats()["webhook_rejected"] == before + 3
    assert received == []
    spans = memory_exporter.get_finished_spans()
    assert [s.attributes["minivoice.webhook.error"] for s in spans] == [
        "not_json",
        "missing_event",
        "missing_call_id",
    ]
    assert all(s.status.status_code.name == "ERROR" for s in spans)
    assert spans[1].attributes["minivoice.call_id"] == "call_7"
    assert format(spans[1].context.trace_id, "032x") == call_trace_id_hex("call_7")
    assert "minivoice.call_id" not in spans[0].attributes
    assert spans[2].attributes["minivoice.event"] == "call.completed"


def test_size_limit_declared_and_streamed(
    collector_server: tuple[str, WebhookCollector, list[Webhook]], memory_exporter: InMemorySpanExporter
) -> None:
    url, _, _ = collector_server

    def chunked() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    with httpx.Client() as client:
        declared = client.post(url, content=b"x" * 5000)
        streamed = client.post(url, content=chunked())
    assert (declared.status_code, declared.json()["error"]) == (413, "too_large")
    assert (streamed.status_code, streamed.json()["error"]) == (413, "too_large")
    assert [s.attributes["minivoice.webhook.error"] for s in memory_exporter.get_finished_spans()] == [
        "too_large",
        "too_large",
    ]


def test_a_slow_body_times_out(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    collector = WebhookCollector(tracer_provider=memory_provider, pii_key=KEY, read_timeout=0.3)
    with UvicornThread(collector) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        sock.settimeout(10)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408")
    assert b'"error":"read_timeout"' in reply
    (span,) = memory_exporter.get_finished_spans()
    assert span.attributes["minivoice.webhook.error"] == "read_timeout"


def test_a_slow_callback_never_delays_acks_and_overflow_is_counted(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    entered = threading.Event()
    handled: list[str] = []

    def slow(webhook: Webhook) -> None:
        entered.set()
        release.wait(10)
        handled.append(webhook.call_id)

    before = counters.stats()["webhook_callbacks_dropped"]
    collector = WebhookCollector(slow, tracer_provider=memory_provider, pii_key=KEY, queue_size=2)
    with caplog.at_level(logging.CRITICAL), UvicornThread(collector) as server, httpx.Client() as client:
        first = client.post(server.url, json={**COMPLETED, "call": {"id": "call_0"}})
        assert entered.wait(5)  # the callback is now stuck, yet every delivery is acked:
        replies = [
            client.post(server.url, json={**COMPLETED, "call": {"id": f"call_{i}"}}) for i in range(1, 5)
        ]
        assert not release.is_set()
        release.set()
        assert collector.worker is not None and collector.worker.join(5)
    collector.close()
    assert [r.status_code for r in [first, *replies]] == [200] * 5
    assert len(memory_exporter.get_finished_spans()) == 5  # no span lost
    assert handled == ["call_0", "call_1", "call_2"]  # one running + a queue of 2
    assert counters.stats()["webhook_callbacks_dropped"] == before + 2


def test_failing_and_async_callbacks(
    memory_provider: TracerProvider, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def failing(webhook: Webhook) -> None:
        seen.append(webhook.call_id)
        raise ValueError("user bug")

    async def async_callback(webhook: Webhook) -> None:
        seen.append("async:" + webhook.call_id)

    before = counters.stats()["webhook_callback_failures"]
    failing_collector = WebhookCollector(failing, tracer_provider=memory_provider, pii_key=KEY)
    async_collector = WebhookCollector(async_callback, tracer_provider=memory_provider, pii_key=KEY)
    with caplog.at_level(logging.CRITICAL):
        with (
            UvicornThread(failing_collector) as one,
            UvicornThread(async_collector) as two,
            httpx.Client() as client,
        ):
            assert client.post(one.url, json=COMPLETED).status_code == 200
            assert client.post(one.url, json={**COMPLETED, "call": {"id": "call_2"}}).status_code == 200
            assert client.post(two.url, json=COMPLETED).status_code == 200
        failing_collector.close()
        async_collector.close()
    assert sorted(seen) == ["async:call_123", "call_123", "call_2"]
    assert counters.stats()["webhook_callback_failures"] == before + 2


def test_a_collector_bug_is_counted_and_the_delivery_still_acked(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenRecent(RecentDeliveries):
        def seen(self, key: tuple[str, str], now: float | None = None) -> bool:
            raise RuntimeError("collector bug")

    before = counters.stats()["internal_errors"]
    collector = WebhookCollector(tracer_provider=memory_provider, pii_key=KEY, recent=BrokenRecent())
    with caplog.at_level(logging.CRITICAL), UvicornThread(collector) as server, httpx.Client() as client:
        reply = client.post(server.url, json=COMPLETED)
    assert (reply.status_code, reply.json()) == (200, {"received": True, "duplicate": False})
    assert counters.stats()["internal_errors"] == before + 1
    (span,) = memory_exporter.get_finished_spans()
    assert span.attributes["minivoice.webhook.duplicate"] is False


def test_webhook_log_lines_hold_no_phone_number(tmp_path: Any, memory_provider: TracerProvider) -> None:
    from collectors import logs

    collector = WebhookCollector(tracer_provider=memory_provider, pii_key=KEY)
    with logs.write_logs_to(tmp_path) as files:
        with UvicornThread(collector) as server, httpx.Client() as client:
            client.post(server.url, json=COMPLETED)
            client.post(server.url, json={"call": COMPLETED["call"]})  # malformed, same numbers
        lines = files.path("webhook").read_text().splitlines()
    assert [json.loads(line)["attributes"].get("minivoice.webhook.error") for line in lines] == [
        None,
        "missing_event",
    ]
    assert json.loads(lines[0])["attributes"]["minivoice.to.masked"] == "+1555***0002"
    for line in lines:
        assert "5551230001" not in line and "5551230002" not in line


def test_middleware_form_leaves_the_rest_of_the_app_alone(
    memory_provider: TracerProvider, memory_exporter: InMemorySpanExporter
) -> None:
    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = WebhookMiddleware(
        Starlette(routes=[Route("/", home)]), path="/webhooks", tracer_provider=memory_provider, pii_key=KEY
    )
    with UvicornThread(app) as server, httpx.Client() as client:
        assert client.get(f"{server.url}/").text == "home"
        assert client.post(f"{server.url}/webhooks", json=COMPLETED).json()["received"] is True
    app.close()
    (span,) = memory_exporter.get_finished_spans()
    assert span.attributes["http.route"] == "/webhooks"
    assert span.attributes["url.path"] == "/webhooks"
