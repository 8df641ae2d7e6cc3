"""Collector overhead: the same workload bare and instrumented, in one run. Not a test: prints figures.

    .venv/bin/python bench/collector_overhead.py [--frames 1000000] [--repeats 5] [--chunk 50000]
        [--requests 3000] [--skip-loopback]

1. Media hot path (target: at most 1 us added per frame). `--frames` realistic MiniVoice media
   frames (JSON text as `json.dumps` writes it, two interleaved tracks, 160-byte mu-law payloads
   in base64) go through a receive loop that already `json.loads` each frame:
   - bare: `async for message in connection: json.loads(message)`;
   - instrumented: the same loop over `collectors.receiver.InstrumentedConnection` (what
     `instrument_receiver` hands the handler), which counts each frame from the raw text;
   - instrumented, parsed-dict API: `async for message in connection.iter_json()`, where the
     collector parses once and counts from the dict the app gets;
   - the counting alone (`StreamStats.observe` on the text, `observe_message` on the dict), and a
     layout that misses the fast path (sorted keys), for reference.
   The connection is an in-memory source with websockets' `recv()` contract, so the figures are the
   collector's cost, not the network's. The variants run back to back on each chunk of `--chunk`
   frames (so load from elsewhere hits bare and instrumented alike); `added` is the median of those
   paired differences over every chunk of every repeat.
2. answer_url (target: at most 100 us added per request at the median): POST /answer to a bare
   Starlette app vs the same app wrapped in `collectors.AnswerUrlMiddleware` (with a batch span
   processor and an exporter that discards), called in-process through ASGI, then over loopback
   (uvicorn + httpx). Median of per-request latencies, interleaved in blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# bench/pipeline.py would shadow the `pipeline` package when this file runs as a script.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402
from websockets.exceptions import ConnectionClosedOK  # noqa: E402
from websockets.frames import Close  # noqa: E402

from collectors.media import StreamStats  # noqa: E402
from collectors.receiver import InstrumentedConnection, ReceiverSession  # noqa: E402
from collectors.tracing import TracerSource  # noqa: E402

# -- media hot path ---------------------------------------------------------------------------------


def media_frames(count: int, *, sort_keys: bool = False) -> list[str]:
    """`count` MiniVoice media frames: inbound/outbound interleaved, 20 ms apart, 160-byte payloads."""
    rng = random.Random(7)
    payloads = [base64.b64encode(rng.randbytes(160)).decode() for _ in range(512)]
    frames = []
    for index in range(count):
        chunk = index // 2 + 1
        frames.append(
            json.dumps(
                {
                    "event": "media",
                    "sequence_number": index + 2,
                    "media": {
                        "track": "inbound" if index % 2 == 0 else "outbound",
                        "chunk": chunk,
                        "timestamp": (chunk - 1) * 20,
                        "payload": payloads[index % len(payloads)],
                    },
                },
                sort_keys=sort_keys,
            )
        )
    return frames


class FrameSource:
    """An in-memory stand-in for a `websockets` connection: `recv()` returns the next frame, then
    raises ConnectionClosedOK, exactly the contract `async for` relies on."""

    def __init__(self, frames: Sequence[str]) -> None:
        self.frames = frames
        self.index = 0

    async def recv(self, decode: bool | None = None) -> str:
        index = self.index
        if index >= len(self.frames):
            raise ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)
        self.index = index + 1
        return self.frames[index]

    def __aiter__(self) -> Any:
        return self._messages()

    async def _messages(self) -> Any:
        # websockets' own __aiter__, line for line.
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return


def session() -> ReceiverSession:
    return ReceiverSession(TracerSource("receiver", TracerProvider()), path="/media")


async def bare_loop(frames: Sequence[str]) -> int:
    count = 0
    async for message in FrameSource(frames):
        json.loads(message)
        count += 1
    return count


async def instrumented_loop(frames: Sequence[str]) -> int:
    count = 0
    async for message in InstrumentedConnection(FrameSource(frames), session()):
        json.loads(message)
        count += 1
    return count


async def parsed_loop(frames: Sequence[str]) -> int:
    count = 0
    async for _message in InstrumentedConnection(FrameSource(frames), session()).iter_json():
        count += 1
    return count


async def observe_text_only(frames: Sequence[str]) -> int:
    observe = StreamStats().observe
    for message in frames:
        observe(message)
    return len(frames)


async def observe_dict_only(frames: Sequence[str]) -> int:
    # json.loads is part of the bare loop too: this variant minus bare = observe_message alone.
    observe = StreamStats().observe_message
    for message in frames:
        observe(json.loads(message))
    return len(frames)


def timed(variant: Callable[[Sequence[str]], Any], frames: Sequence[str]) -> float:
    started = time.perf_counter()
    processed = asyncio.run(variant(frames))
    elapsed = time.perf_counter() - started
    assert processed == len(frames), (variant.__name__, processed)
    return elapsed


def bench_media(count: int, repeats: int, chunk: int) -> dict[str, float]:
    """Per variant: us/frame (median over repeats of the whole run) and the added us/frame, as the
    median over every (repeat, chunk) pair of (variant - bare). The variants run back to back on
    each chunk of `chunk` frames, so a burst of load from elsewhere hits both sides of a pair."""
    print(f"building {count:,} media frames ...", flush=True)
    frames = media_frames(count)
    sorted_frames = media_frames(count, sort_keys=True)
    print(f"frame: {len(frames[0])} characters, e.g. {frames[0][:100]}...")
    bare_name = "bare loop (recv + json.loads)"
    variants: dict[str, tuple[Callable[[Sequence[str]], Any], Sequence[str]]] = {
        bare_name: (bare_loop, frames),
        "instrumented: InstrumentedConnection, raw-text fast path": (instrumented_loop, frames),
        "instrumented: iter_json() parsed-dict API": (parsed_loop, frames),
        "instrumented, frames in another key order (general path)": (instrumented_loop, sorted_frames),
        "counting alone: StreamStats.observe(text), no loop": (observe_text_only, frames),
        "json.loads + StreamStats.observe_message(dict), no loop": (observe_dict_only, frames),
    }
    totals: dict[str, list[float]] = {name: [] for name in variants}
    pairs: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        run = dict.fromkeys(variants, 0.0)
        for begin in range(0, count, chunk):
            seconds = {
                name: timed(variant, source[begin : begin + chunk])
                for name, (variant, source) in variants.items()
            }
            size = min(chunk, count - begin)
            for name, elapsed in seconds.items():
                run[name] += elapsed
                pairs[name].append((elapsed - seconds[bare_name]) / size * 1e6)
        for name, elapsed in run.items():
            totals[name].append(elapsed)
        print(f"  repeat {repeat + 1}/{repeats} done", flush=True)
    bare = statistics.median(totals[bare_name])
    print(f"\nMedia hot path: {count:,} frames x {repeats} repeats, in chunks of {chunk:,}")
    print(f"| {'variant':<58} | {'us/frame':>8} | {'added us':>8} | {'ratio':>6} |")
    print(f"| {'-' * 58} | {'-' * 8} | {'-' * 8} | {'-' * 6} |")
    added = {}
    for name, runs in totals.items():
        median = statistics.median(runs)
        added[name] = statistics.median(pairs[name])
        print(f"| {name:<58} | {median / count * 1e6:8.3f} | {added[name]:+8.3f} | {median / bare:5.2f}x |")
    print("(us/frame: median whole-run time / frames; added: median over chunks of the paired difference)")
    return added


# -- answer_url -----------------------------------------------------------------------------------

ANSWER_BODY = json.dumps(
    {
        "event": "call.answered",
        "created_at": "2026-05-29T12:09:58Z",
        "call": {
            "id": "call_123",
            "customer_id": "cust_123",
            "application_id": "app_123",
            "status": "in-progress",
            "direction": "outbound",
            "from": "+15551230001",
            "to": "+15551230002",
        },
    }
).encode()


class DiscardingExporter(SpanExporter):
    """Accepts every batch and drops it: the export path without a network."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def answer_apps() -> tuple[Any, Any, TracerProvider, DiscardingExporter]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from collectors import AnswerUrlMiddleware

    async def answer(request: Request) -> JSONResponse:
        call = (await request.json())["call"]
        return JSONResponse(
            {
                "actions": [
                    {
                        "type": "start_stream",
                        "stream_url": f"wss://media.example.com/minivoice?call_id={call['id']}&token=s3cret",
                        "track": "both",
                    }
                ]
            }
        )

    exporter = DiscardingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    bare = Starlette(routes=[Route("/answer", answer, methods=["POST"])])
    instrumented = AnswerUrlMiddleware(
        Starlette(routes=[Route("/answer", answer, methods=["POST"])]),
        path="/answer",
        tracer_provider=provider,
        pii_key=b"bench-key",
    )
    return bare, instrumented, provider, exporter


async def asgi_request(app: Any) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/answer",
        "raw_path": b"/answer",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"app.example.com"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(ANSWER_BODY)).encode()),
            (b"x-minivoice-call-id", b"call_123"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    pending = [{"type": "http.request", "body": ANSWER_BODY, "more_body": False}]
    status = 0

    async def receive() -> Any:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def bench_answer_url_in_process(requests: int, block: int = 100) -> float:
    bare, instrumented, provider, exporter = answer_apps()

    async def run() -> tuple[list[int], list[int]]:
        latencies: dict[str, list[int]] = {"bare": [], "instrumented": []}
        for _ in range(50):  # warm up both
            await asyncio_request_pair(bare, instrumented)
        for start in range(0, requests, block):
            for name, app in (("bare", bare), ("instrumented", instrumented)):
                for _ in range(min(block, requests - start)):
                    began = time.perf_counter_ns()
                    status = await asgi_request(app)
                    latencies[name].append(time.perf_counter_ns() - began)
                    assert status == 200
        return latencies["bare"], latencies["instrumented"]

    bare_ns, instrumented_ns = asyncio.run(run())
    provider.force_flush()
    provider.shutdown()
    assert exporter.spans >= requests, exporter.spans
    return report_answer_url("in-process ASGI", bare_ns, instrumented_ns)


async def asyncio_request_pair(bare: Any, instrumented: Any) -> None:
    await asgi_request(bare)
    await asgi_request(instrumented)


def bench_answer_url_loopback(requests: int, block: int = 50) -> float:
    import httpx

    from tests.otlp_sink import UvicornThread

    bare, instrumented, provider, _exporter = answer_apps()
    latencies: dict[str, list[int]] = {"bare": [], "instrumented": []}
    with UvicornThread(bare) as bare_server, UvicornThread(instrumented) as instrumented_server:
        urls = {"bare": bare_server.url + "/answer", "instrumented": instrumented_server.url + "/answer"}
        with httpx.Client() as client:
            headers = {"content-type": "application/json", "x-minivoice-call-id": "call_123"}
            for name in ("bare", "instrumented") * 25:  # warm up, keep-alive connections open
                client.post(urls[name], content=ANSWER_BODY, headers=headers)
            for start in range(0, requests, block):
                for name in ("bare", "instrumented"):
                    for _ in range(min(block, requests - start)):
                        began = time.perf_counter_ns()
                        response = client.post(urls[name], content=ANSWER_BODY, headers=headers)
                        latencies[name].append(time.perf_counter_ns() - began)
                        assert response.status_code == 200
    provider.shutdown()
    return report_answer_url("loopback uvicorn + httpx", latencies["bare"], latencies["instrumented"])


def report_answer_url(label: str, bare_ns: list[int], instrumented_ns: list[int]) -> float:
    bare, instrumented = median_us(bare_ns), median_us(instrumented_ns)
    p90 = statistics.quantiles(instrumented_ns, n=10)[-1] / 1000
    bare_p90 = statistics.quantiles(bare_ns, n=10)[-1] / 1000
    print(
        f"| {label:<26} | {len(bare_ns):>8,} | {bare:9.1f} | {instrumented:11.1f} |"
        f" {instrumented - bare:+9.1f} | {instrumented / bare:5.2f}x | {bare_p90:8.1f} / {p90:8.1f} |"
    )
    return instrumented - bare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=50_000, help="Frames per paired measurement.")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--skip-loopback", action="store_true", help="Only the in-process answer_url run.")
    args = parser.parse_args(argv)

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    added = bench_media(args.frames, args.repeats, args.chunk)
    raw = added["instrumented: InstrumentedConnection, raw-text fast path"]
    parsed = added["instrumented: iter_json() parsed-dict API"]

    print(f"\nanswer_url: {args.requests:,} requests per app, median per-request latency (us)")
    print(
        f"| {'path':<26} | {'requests':>8} | {'bare':>9} | {'instrumented':>11} | {'added':>9} |"
        f" {'ratio':>6} | {'p90 bare / instr.':>19} |"
    )
    print(f"| {'-' * 26} | {'-' * 8} | {'-' * 9} | {'-' * 11} | {'-' * 9} | {'-' * 6} | {'-' * 19} |")
    in_process = bench_answer_url_in_process(args.requests)
    loopback = None if args.skip_loopback else bench_answer_url_loopback(args.requests)

    print("\nTargets")
    for label, value in (("raw-text path", raw), ("iter_json():  ", parsed)):
        print(
            f"- media, {label}: {value:+.3f} us/frame (target <= 1 us): {'met' if value <= 1 else 'NOT met'}"
        )
    print(
        f"- answer_url in-process: {in_process:+.1f} us/request at the median (target <= 100 us): "
        f"{'met' if in_process <= 100 else 'NOT met'}"
    )
    if loopback is not None:
        print(
            f"- answer_url loopback:   {loopback:+.1f} us/request at the median (target <= 100 us): "
            f"{'met' if loopback <= 100 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
