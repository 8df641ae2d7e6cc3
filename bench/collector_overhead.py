"""Collector overhead: the same workload bare and instrumented, in one run. Not a test: prints figures.

    .venv/bin/python bench/collector_overhead.py [--frames 1000000] [--repeats 5] [--chunk 50000]
        [--requests 2000] [--rounds 3] [--export otlp|discard] [--think-ms 1]
        [--skip-media] [--skip-in-process] [--skip-loopback]

The load average is printed at the start of each part and of each loopback round.

1. Media hot path (target: at most 1 us added per frame). `--frames` realistic MiniVoice media
   frames (JSON text as `json.dumps` writes it, two interleaved tracks, 160-byte mu-law payloads
   in base64) go through a receive loop that already `json.loads` each frame:
   - bare: `async for message in connection: json.loads(message)`;
   - instrumented: the same loop over `collectors.receiver.InstrumentedConnection` (what
     `instrument_receiver` hands the handler), which counts each frame from the raw text (with
     the C frame reader `collectors._media_fast` when it is built: the first line says);
   - instrumented, parsed-dict API: `async for message in connection.iter_json()`, where the
     collector parses once and counts from the dict the app gets;
   - the counting alone (`StreamStats.observe` on the text, `observe_message` on the dict), the
     instrumented loop with the pure-Python frame reader (where the C one is not built), and a
     layout that misses the fast path (sorted keys), for reference.
   The connection is an in-memory source with websockets' `recv()` contract, so the figures are the
   collector's cost, not the network's. The variants run back to back on each chunk of `--chunk`
   frames (so load from elsewhere hits bare and instrumented alike); `added` is the median of those
   paired differences over every chunk of every repeat.
2. answer_url (target: at most 100 us added per request at the median). POST /answer with a
   realistic `call.answered` body (its own call id and caller number per request, so nothing per
   call is cached; the service's own number constant) to three variants: the bare Starlette app,
   the app wrapped in `collectors.AnswerUrlMiddleware` (counting batch span processor), and the
   same also writing its JSON log line to a file. `--rounds` rounds of `--requests` requests per
   variant, interleaved request by request; each figure is the median over rounds of the round's
   median (or p99), and `added` pairs each round's instrumented figure with its bare one.
   - in-process ASGI calls (exporter that discards): the latency until the response's last byte
     is sent, which is what a client waits for, and the time until the app call returns, which
     adds the collector's work done after the response (the CPU it costs per request);
   - over loopback: each variant under its own uvicorn process (uvloop, httptools), the real
     OTLP/HTTP exporter sending to a sink process, one keep-alive httpx client here. Twice:
     pinned (client on CPU 0, servers on CPU 1, `--think-ms` between requests), as MiniVoice and
     the customer's service are different machines; and unpinned back to back, the worst case on
     a small shared box, where the servers' work after each response competes with the client
     for the cores. Also printed: each server process's CPU time per request, all threads.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# bench/pipeline.py would shadow the `pipeline` package when this file runs as a script.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402
from websockets.exceptions import ConnectionClosedOK  # noqa: E402
from websockets.frames import Close  # noqa: E402

import collectors.media  # noqa: E402
from collectors import logs  # noqa: E402
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


async def python_reader_loop(frames: Sequence[str]) -> int:
    # The instrumented loop as it runs where the C frame reader is not built.
    saved = collectors.media.scan_media
    collectors.media.scan_media = collectors.media._scan_python
    try:
        return await instrumented_loop(frames)
    finally:
        collectors.media.scan_media = saved


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
        "instrumented, pure-Python frame reader (C one not built)": (python_reader_loop, frames),
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

TO_NUMBER = "+15551230002"  # the service's own number: the same in every call


def answer_body(index: int) -> bytes:
    """A realistic `call.answered` body: its own call id and caller number for every request (so
    nothing per call can be cached), the service's number constant, as in real traffic."""
    return json.dumps(
        {
            "event": "call.answered",
            "created_at": "2026-05-29T12:09:58Z",
            "call": {
                "id": f"call_{index:09d}",
                "customer_id": "cust_123",
                "application_id": "app_123",
                "status": "in-progress",
                "direction": "inbound",
                "from": f"+1555{index % 10_000_000:07d}",
                "to": TO_NUMBER,
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


VARIANTS = ("bare", "instrumented", "instrumented+logs")
"""bare: the Starlette app alone; instrumented: wrapped in AnswerUrlMiddleware (batch span
processor); instrumented+logs: the same, also writing its JSON log line to a file."""


def answer_app(variant: str, *, exporter: SpanExporter | None = None, log_dir: str | None = None) -> Any:
    """The answer_url app of one variant. `exporter` defaults to one that discards; the logs of
    `instrumented+logs` go to `log_dir` (a temporary directory by default)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from collectors import AnswerUrlMiddleware, write_logs_to
    from collectors.tracing import CountingBatchSpanProcessor

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

    app = Starlette(routes=[Route("/answer", answer, methods=["POST"])])
    if variant == "bare":
        return app
    provider = TracerProvider()
    provider.add_span_processor(CountingBatchSpanProcessor(exporter or DiscardingExporter()))
    if variant == "instrumented+logs":
        write_logs_to(log_dir or tempfile.mkdtemp(prefix="callscope-bench-logs-"))
    elif variant != "instrumented":
        raise ValueError(variant)
    return AnswerUrlMiddleware(app, path="/answer", tracer_provider=provider, pii_key=b"bench-key")


def asgi_scope(body: bytes) -> dict[str, Any]:
    return {
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
            (b"user-agent", b"MiniVoice-Webhooks/2.1"),
            (b"accept", b"*/*"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-minivoice-signature", b"t=1780056598,v1=5d41402abc4b2a76b9719d911017c592"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_request(app: Any, body: bytes) -> tuple[int, int]:
    """One POST /answer through `app` in-process: (ns until the response's last byte was sent,
    ns until the app returned, i.e. with the work done after the response)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0
    last_byte = 0

    async def receive() -> Any:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal status, last_byte
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            last_byte = time.perf_counter_ns()

    began = time.perf_counter_ns()
    await app(asgi_scope(body), receive, send)
    done = time.perf_counter_ns()
    assert status == 200 and last_byte, status
    return last_byte - began, done - began


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


class Rounds:
    """Per-request latencies (ns) per variant and round; figures are medians over rounds of each
    round's statistic, and `added` pairs each round's instrumented figure with its bare one."""

    def __init__(self) -> None:
        self.samples: dict[str, list[list[int]]] = {}

    def add(self, round_index: int, variant: str, ns: int) -> None:
        rounds = self.samples.setdefault(variant, [])
        while len(rounds) <= round_index:
            rounds.append([])
        rounds[round_index].append(ns)

    def stat(self, variant: str, fraction: float) -> list[float]:
        return [percentile(r, fraction) / 1000 for r in self.samples[variant]]

    def row(self, label: str, variant: str) -> dict[str, float]:
        median, p99 = self.stat(variant, 0.5), self.stat(variant, 0.99)
        bare_median, bare_p99 = self.stat("bare", 0.5), self.stat("bare", 0.99)
        added = [m - b for m, b in zip(median, bare_median, strict=True)]
        added_p99 = [m - b for m, b in zip(p99, bare_p99, strict=True)]
        figures = {
            "median": statistics.median(median),
            "p99": statistics.median(p99),
            "added": statistics.median(added),
            "added_p99": statistics.median(added_p99),
        }
        per_round = ", ".join(f"{a:+.1f}" for a in added)
        print(
            f"| {label:<44} | {figures['median']:8.1f} | {figures['added']:+8.1f} | {per_round:<24} |"
            f" {figures['p99']:8.1f} | {figures['added_p99']:+8.1f} |"
        )
        return figures


def table_header(first: str) -> None:
    print(
        f"| {first:<44} | {'median':>8} | {'added':>8} | {'added per round':<24} | {'p99':>8} |"
        f" {'added':>8} |"
    )
    print(f"| {'-' * 44} | {'-' * 8} | {'-' * 8} | {'-' * 24} | {'-' * 8} | {'-' * 8} |")


def bench_answer_url_in_process(requests: int, rounds: int) -> dict[str, float]:
    """Each round sends `requests` requests to every variant, interleaved request by request (the
    order rotating), so load from elsewhere hits every variant alike."""
    apps = {variant: answer_app(variant) for variant in VARIANTS}
    bodies = [answer_body(index) for index in range(requests * rounds + 200)]
    last_byte, returned = Rounds(), Rounds()
    # The collectors' loggers are process-wide: on only while the +logs variant runs.
    log = logs.logger_for("answer_url")

    async def run() -> None:
        for index in range(200):  # warm up every variant
            for variant, app in apps.items():
                log.disabled = variant != "instrumented+logs"
                await asgi_request(app, bodies[index])
        for round_index in range(rounds):
            for index in range(requests):
                body = bodies[200 + round_index * requests + index]
                order = VARIANTS[index % 3 :] + VARIANTS[: index % 3]
                for variant in order:
                    log.disabled = variant != "instrumented+logs"
                    to_last_byte, to_return = await asgi_request(apps[variant], body)
                    last_byte.add(round_index, variant, to_last_byte)
                    returned.add(round_index, variant, to_return)

    print(f"\nanswer_url in-process ASGI: {rounds} rounds x {requests:,} requests per variant, load {load()}")
    asyncio.run(run())
    print("load at the end", load())
    results = {}
    print("\nLatency: until the response's last byte is sent (what the client waits for), us")
    table_header("variant")
    for variant in VARIANTS:
        results[f"latency {variant}"] = last_byte.row(variant, variant)["added"]
    print("\nCPU per request: until the app returns, i.e. with the collector's work after the response, us")
    table_header("variant")
    for variant in VARIANTS:
        results[f"total {variant}"] = returned.row(variant, variant)["added"]
    return results


# -- answer_url over loopback: each app under its own uvicorn process ------------------------------


def serve(variant: str, otlp_endpoint: str | None, log_dir: str | None) -> None:
    """Child process: serve one variant (or `sink`, an OTLP endpoint that accepts and discards)
    with uvicorn on a free loopback port; print the port, serve until SIGTERM, print the stats."""
    import socket

    import uvicorn

    from collectors import counters

    if variant == "sink":

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-type", b"application/x-protobuf")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

    else:
        exporter = None
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
        app = answer_app(variant, exporter=exporter, log_dir=log_dir)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    # uvicorn re-raises the SIGTERM it handled once it has stopped: let that one pass.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run(sockets=[listener])
    stats = counters.stats()
    wanted = ("spans_ended", "spans_exported", "spans_dropped", "internal_errors")
    print(json.dumps({name: stats[name] for name in wanted}))


class ServerProcess:
    def __init__(self, variant: str, *extra: str, cpus: set[int] | None = None) -> None:
        self.variant = variant
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", variant, *extra]
        # Pinned before it starts, so every thread it makes (the export thread too) stays there.
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=pin)  # noqa: PLW1509
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (every thread)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return out.strip()


def bench_answer_url_loopback(
    requests: int, rounds: int, export: str, pinned: bool, think_ms: float
) -> tuple[float, float]:
    """Each variant under its own uvicorn process (uvloop, httptools) on loopback; one keep-alive
    httpx client in this process sends every variant its requests, interleaved request by request.
    The instrumented servers export with the real OTLP/HTTP exporter to a sink process (or discard,
    `--export discard`), so the batch processor's thread runs in the server as in production.

    `pinned`: the client on CPU 0, the servers and the sink on CPU 1, as MiniVoice and the
    customer's service are different machines, and `think_ms` between requests, as MiniVoice sends
    one answer_url request per call: what a server does once it has answered then delays neither
    the client reading the answer nor the next request. Unpinned and back to back, the client and
    the servers share both cores, and each server's work after its response competes with the
    client reading it: the worst case on a small shared box. Returns the instrumented `added`."""
    import httpx

    client_cpus, server_cpus = ({0}, {1}) if pinned else (None, None)
    sink = ServerProcess("sink", cpus=server_cpus) if export == "otlp" else None
    extra = ["--otlp", sink.url + "/v1/traces"] if sink else []
    log_dir = tempfile.mkdtemp(prefix="callscope-bench-logs-")
    servers = {v: ServerProcess(v, *extra, "--logs", log_dir, cpus=server_cpus) for v in VARIANTS}
    own_cpus = os.sched_getaffinity(0)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    bodies = [answer_body(index) for index in range(requests * rounds + 200)]
    latencies = Rounds()
    headers = {"content-type": "application/json", "user-agent": "MiniVoice-Webhooks/2.1"}
    mode = (
        f"pinned (client CPU 0, servers CPU 1), {think_ms:g} ms between requests"
        if pinned
        else (f"unpinned, {think_ms:g} ms between requests")
    )
    print(
        f"\nanswer_url over loopback, {mode}: uvicorn per variant, httpx keep-alive client, {rounds} "
        f"rounds x {requests:,} requests per variant, export {export}, load {load()}"
    )
    cpu: dict[str, float] = {}
    try:
        with httpx.Client() as client:
            urls = {variant: server.url + "/answer" for variant, server in servers.items()}
            for index in range(200):
                for variant in VARIANTS:
                    client.post(urls[variant], content=bodies[index], headers=headers)
            cpu_before = {variant: server.cpu_seconds() for variant, server in servers.items()}
            for round_index in range(rounds):
                for index in range(requests):
                    body = bodies[200 + round_index * requests + index]
                    for variant in VARIANTS[index % 3 :] + VARIANTS[: index % 3]:
                        if think_ms:
                            time.sleep(think_ms / 1000)
                        began = time.perf_counter_ns()
                        response = client.post(urls[variant], content=body, headers=headers)
                        latencies.add(round_index, variant, time.perf_counter_ns() - began)
                        assert response.status_code == 200
                print(f"  round {round_index + 1}/{rounds} done, load {load()}", flush=True)
            cpu = {v: server.cpu_seconds() - cpu_before[v] for v, server in servers.items()}
    finally:
        os.sched_setaffinity(0, own_cpus)
        stats = {variant: server.stop() for variant, server in servers.items()}
        if sink is not None:
            sink.stop()
    print("\nLatency as the client sees it (request sent to response read), us")
    table_header("variant")
    results = {variant: latencies.row(variant, variant)["added"] for variant in VARIANTS}
    total = requests * rounds
    print(
        "\nCPU time of each server process (all its threads: the event loop, the batch span "
        "processor's export thread), us per request: "
        + ", ".join(f"{variant} {cpu[variant] / total * 1e6:.0f}" for variant in VARIANTS if variant in cpu)
    )
    for variant in VARIANTS[1:]:
        print(f"collector stats in the {variant} server: {stats[variant]}")
    return results["instrumented"], results["instrumented+logs"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=50_000, help="Frames per paired measurement.")
    parser.add_argument("--requests", type=int, default=2000, help="answer_url requests per variant, round.")
    parser.add_argument("--rounds", type=int, default=3, help="answer_url rounds.")
    parser.add_argument("--export", choices=("otlp", "discard"), default="otlp", help="Loopback exporter.")
    parser.add_argument(
        "--think-ms", type=float, default=1.0, help="Pause between loopback requests, pinned."
    )
    parser.add_argument("--skip-media", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--skip-loopback", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--otlp", help=argparse.SUPPRESS)
    parser.add_argument("--logs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.otlp, args.logs)
        return

    from collectors.media import FAST_READER

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {load()}, "
        f"C frame reader {'built' if FAST_READER else 'NOT built (pure-Python reader)'}"
    )
    targets = []
    if not args.skip_media:
        added = bench_media(args.frames, args.repeats, args.chunk)
        raw = added["instrumented: InstrumentedConnection, raw-text fast path"]
        parsed = added["instrumented: iter_json() parsed-dict API"]
        for label, value in (("plain `async for`", raw), ("iter_json()", parsed)):
            targets.append(f"- media, {label}: {value:+.3f} us/frame (target <= 1 us): " + met(value, 1))
    if not args.skip_in_process:
        in_process = bench_answer_url_in_process(args.requests, args.rounds)
        for variant in VARIANTS[1:]:
            latency, total = in_process[f"latency {variant}"], in_process[f"total {variant}"]
            targets.append(
                f"- answer_url in-process, {variant}: {latency:+.1f} us latency, {total:+.1f} us with the "
                "work after the response (target <= 100 us at the median): "
                f"{met(latency, 100)} / {met(total, 100)}"
            )
    if not args.skip_loopback:
        runs = [("pinned", True, args.think_ms)] if (os.cpu_count() or 1) >= 2 else []
        runs.append(("unpinned, back to back", False, 0.0))
        for label, pinned, think_ms in runs:
            pair = bench_answer_url_loopback(args.requests, args.rounds, args.export, pinned, think_ms)
            for variant, value in zip(VARIANTS[1:], pair, strict=True):
                targets.append(
                    f"- answer_url loopback ({label}), {variant}: {value:+.1f} us at the median "
                    f"(target <= 100 us): {met(value, 100)}"
                )
    print(f"\nTargets (load {load()})")
    print("\n".join(targets))


def met(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


if __name__ == "__main__":
    main()
