"""Soak: many concurrent simulated calls for minutes, through every component, with faults.

    .venv/bin/python bench/soak.py                      # 5 minutes, 100 concurrent calls, every fault
    .venv/bin/python bench/soak.py --minutes 2          # shorter
    .venv/bin/python bench/soak.py --faults ingest_kill,unreachable --report soak.json

What runs, each in its own process so that any of them can be killed or measured:

- `callscope ingest` (a subprocess, restarted on the same port after each kill -9), its data
  directory on a small tmpfs when we may mount one (so the disk can really fill up);
- `callscope build --follow` (a subprocess), applying new spans every few seconds;
- the demo customer app with the collectors installed (a subprocess: `soak.py app-child`),
  exporting through a TCP proxy (a thread here) that can make the endpoint unreachable;
  a ledger in that process records every span the collectors ended and whether the OTLP
  exporter got it acknowledged (a 200 from ingest) or gave up;
- the MiniVoice simulator (this process), keeping `--concurrency` calls in flight.

Faults (each switchable with `--faults`):

- `ingest_kill`: ingest is killed with SIGKILL and restarted, twice;
- `unreachable`: the exporter endpoint black-holes connections for `--unreachable-seconds`;
- `receiver_restart`: the demo app's stream receiver is stopped mid-call and started again;
- `webhooks`: more calls get duplicated and reordered webhooks (and the scenarios stay in the mix);
- `disk_full`: the data directory's filesystem is filled (tmpfs) for `--disk-full-seconds`, or,
  where mounting is not possible and we are not root, its directories are made read-only.

At the end: ingest is stopped (its log rolled into segments), `callscope compact` runs, then a
last `callscope build`. Every call's verdict is compared with the simulator's ground truth, and
every span in the ledger is looked up in `spans_raw`: acknowledged spans must be stored exactly
once. Figures per fault, RSS at the start and end of each process, and the answer_url latency
during each fault against the rest of the run are printed (and written as JSON with --report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import the repo's packages
    sys.path.insert(0, str(ROOT))

FAULTS = ("ingest_kill", "unreachable", "receiver_restart", "webhooks", "disk_full")
"""Every fault this soak can inject (`--faults`)."""
WEBHOOK_FAULT_SCENARIOS = ("duplicate_webhooks", "out_of_order_webhooks")
STREAM_FAULT_SCENARIOS = frozenset(
    {
        "receiver_down",
        "tls_failure",
        "handshake_rejected",
        "receiver_closes_early",
        "network_drop",
        "no_media",
    }
)
PYTHON = sys.executable
NS = 1_000_000_000

Log = Callable[[str], None]


# ---- options and report -------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakOptions:
    """Everything a soak run can change. `seconds` or `calls` bounds how long calls are placed."""

    work_dir: Path
    seconds: float = 300.0
    calls: int | None = None
    """Stop after this many calls instead of after `seconds` (soak-lite)."""
    concurrency: int = 100
    media_seconds: float = 4.0
    speed: float = 1.0
    faults: frozenset[str] = frozenset(FAULTS)
    schedule: tuple[tuple[str, float], ...] | None = None
    """(fault, seconds after the start) pairs; default: spread over `seconds`."""
    ingest_down_s: float = 3.0
    unreachable_s: float = 30.0
    receiver_down_s: float = 1.0
    disk_full_s: float = 15.0
    fault_settle_s: float = 12.0
    """After each fault, before reading what it cost: the exporter's retries (10 s) run out."""
    grace_s: int = 30
    answer_url_timeout_ms: int = 5000
    tmpfs_mb: int = 1024
    keep_mount: bool = False
    """Leave the data directory's tmpfs mounted at the end (to look at it; unmount it yourself)."""
    follow: bool = True
    follow_interval_s: float = 2.0
    compact_interval_s: float = 60.0
    bsp_delay_ms: int = 1000
    sample_every_s: float = 5.0
    seed: int = 7

    def fault_schedule(self) -> list[tuple[str, float]]:
        """When each enabled timed fault starts, in seconds from the first call."""
        if self.schedule is not None:
            return sorted(
                ((name, at) for name, at in self.schedule if name in self.faults), key=lambda x: x[1]
            )
        t = self.seconds
        plan = [
            ("ingest_kill", 0.08 * t),
            ("unreachable", 0.18 * t),
            ("receiver_restart", 0.45 * t),
            ("disk_full", 0.57 * t),
            ("ingest_kill", 0.80 * t),
        ]
        return [(name, at) for name, at in plan if name in self.faults]


@dataclass
class FaultWindow:
    """One injected fault: when it started and ended (unix ns), and what it did."""

    name: str
    start_ns: int
    end_ns: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    stats_before: dict[str, int] = field(default_factory=dict)
    stats_after: dict[str, int] = field(default_factory=dict)


@dataclass
class SoakReport:
    """What a soak run measured. `lines()` is the printed report."""

    options: dict[str, Any]
    calls: int = 0
    concurrency: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, Any] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    rss_mb: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_series: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    collectors: dict[str, int] = field(default_factory=dict)
    processes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def acknowledged_lost(self) -> int:
        return int(self.spans.get("acked_not_stored", 0))

    @property
    def duplicated_after_compaction(self) -> int:
        return int(self.spans.get("stored_more_than_once", 0))

    def lines(self) -> list[str]:
        """The report, for people."""
        c, v, s = self.concurrency, self.verdicts, self.spans
        out = [
            f"calls placed: {self.calls} (in flight: median {c.get('median', 0):g}, "
            f"max {c.get('max', 0):g}); placing took {self.timings.get('place_calls', 0):.0f} s",
            f"verdicts: {v.get('correct_complete', 0)}/{v.get('complete', 0)} correct among calls whose "
            f"spans were all stored; {v.get('correct_incomplete', 0)}/{v.get('incomplete', 0)} among calls "
            f"that lost spans; {v.get('adjusted', 0)} expectations adjusted for the receiver restart",
        ]
        out.extend(f"  mismatch: {m}" for m in v.get("mismatches", [])[:10])
        out.append(
            f"spans: ended {s.get('ended', 0)}, acknowledged {s.get('acked', 0)}, export failed "
            f"{s.get('export_failed', 0)}, never exported {s.get('never_exported', 0)}; stored "
            f"{s.get('stored_distinct', 0)} distinct / {s.get('stored_rows', 0)} rows in spans_raw after "
            f"compaction; acknowledged but not stored: {s.get('acked_not_stored', 0)}; stored more than "
            f"once: {s.get('stored_more_than_once', 0)}; stored although the exporter gave up: "
            f"{s.get('failed_but_stored', 0)}"
        )
        keys = (
            "spans_ended",
            "spans_exported",
            "spans_dropped_export_failed",
            "spans_dropped_queue_full",
            "export_failures",
            "internal_errors",
        )
        out.append("collectors.stats(): " + ", ".join(f"{k}={self.collectors.get(k, 0)}" for k in keys))
        base = self.latency_ms.get("baseline", {})
        served = self.latency_ms.get("baseline_served", {})
        out.append(
            f"answer_url latency outside faults: p50 {base.get('p50', 0):.1f} ms, "
            f"p99 {base.get('p99', 0):.1f} ms (n={base.get('n', 0)}) seen by MiniVoice; span duration "
            f"p50 {served.get('p50', 0):.2f} ms, p99 {served.get('p99', 0):.2f} ms in the app"
        )
        for fault in self.faults:
            lat, sp, calls = fault.get("latency_ms", {}), fault.get("spans", {}), fault.get("calls", {})
            out.append(
                f"fault {fault['name']} at +{fault['at_s']:.0f} s for {fault['seconds']:.1f} s: "
                f"answer_url p50 {lat.get('p50', 0):.1f} ms p99 {lat.get('p99', 0):.1f} ms "
                f"(n={lat.get('n', 0)}); spans ended {sp.get('ended', 0)}: acked {sp.get('acked', 0)}, "
                f"failed {sp.get('export_failed', 0)}, never exported {sp.get('never_exported', 0)}, "
                f"acked-but-lost {sp.get('acked_not_stored', 0)}; calls {calls.get('calls', 0)}: "
                f"{calls.get('correct_complete', 0)}/{calls.get('complete', 0)} complete calls right, "
                f"{calls.get('incomplete', 0)} lost spans"
            )
            srv = fault.get("served_ms", {})
            out.append(
                f"  answer_url span duration p50 {srv.get('p50', 0):.2f} ms, p99 {srv.get('p99', 0):.2f} ms"
            )
            details = {k: d for k, d in fault.get("details", {}).items() if d not in (None, [], {})}
            if details:
                out.append(f"  {json.dumps(details, default=str)}")
            drops = fault.get("collector_drops", {})
            if drops:
                out.append(f"  collectors.stats() during: {json.dumps(drops)}")
        for name, rss in self.rss_mb.items():
            out.append(
                f"RSS {name}: start {rss.get('start', 0):.0f} MB, middle {rss.get('middle', 0):.0f} MB, "
                f"end {rss.get('end', 0):.0f} MB, max {rss.get('max', 0):.0f} MB"
            )
        out.extend(f"{key}: {value}" for key, value in self.processes.items())
        if self.privacy:
            out.append(f"privacy scan of every log: {json.dumps(self.privacy)}")
        out.extend(f"PROBLEM: {p}" for p in self.problems)
        return out


# ---- small helpers --------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50 and p99 of latencies in ms."""
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}


def rss_mb(pid: int | None, children: bool = False) -> float:
    """Resident memory of a process (and its children), in MB; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        if children:
            total += sum(c.memory_info().rss for c in process.children(recursive=True))
    except psutil.Error:
        return 0.0
    return total / 1e6


# ---- ingest and build subprocesses ------------------------------------------------------------


class IngestProcess:
    """`callscope ingest` as a subprocess on a fixed port; `kill9()` and `start()` again."""

    def __init__(self, data: Path, port: int, log_path: Path, compact_interval_s: float) -> None:
        self.data = data
        self.port = port
        self.log_path = log_path
        self.compact_interval_s = compact_interval_s
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.orphans: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait until /healthz answers; returns the seconds it took (WAL replay included)."""
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "callscope",
                    "ingest",
                    "--port",
                    str(self.port),
                    "--data",
                    str(self.data),
                    "--log-level",
                    "warning",
                    "--compact-interval",
                    str(self.compact_interval_s),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
            )
        self.starts += 1
        with httpx.Client(timeout=2) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ingest exited with {self.process.returncode}; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/healthz").status_code == 200:
                        return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"ingest did not answer /healthz within {timeout:g} s")
                time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        """/healthz counters, or {} if it does not answer."""
        try:
            response = httpx.get(self.url + "/healthz", timeout=5)
            return dict(response.json())
        except (httpx.HTTPError, ValueError):
            return {}

    def kill9(self) -> list[int]:
        """SIGKILL the ingest process; returns the pids of its children still alive afterwards."""
        assert self.process is not None
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        _gone, alive = psutil.wait_procs(children, timeout=5)  # they should follow their parent
        self.orphans.extend(p.pid for p in alive)
        return [p.pid for p in alive]

    def stop(self, timeout: float = 120.0) -> int | None:
        """SIGTERM (flush the log into segments) and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=30)


class BuildProcess:
    """`callscope build --follow` as a subprocess; restarted (and counted) if it dies."""

    def __init__(self, data: Path, env: dict[str, str], interval_s: float, log_path: Path) -> None:
        self.data = data
        self.env = env
        self.interval_s = interval_s
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.deaths: list[dict[str, Any]] = []

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "callscope",
                    "build",
                    "--data",
                    str(self.data),
                    "--follow",
                    "--interval",
                    str(self.interval_s),
                    "--quiet",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
                cwd=ROOT,
            )

    def check(self) -> None:
        """Restart it if it exited (a supervisor would); the death is reported."""
        if self.process is not None and self.process.poll() is not None:
            self.deaths.append({"at": time.time(), "exit_code": self.process.returncode})
            self.start()

    def stop(self) -> int | None:
        """Ctrl+C (SIGINT) and wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode


def run_cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a callscope command to completion."""
    return subprocess.run(
        [PYTHON, "-m", "callscope", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---- the exporter endpoint, through a proxy that can black-hole it ----------------------------


class Proxy:
    """A TCP proxy in a thread: the collectors' OTLP endpoint. `blackhole()` stops all traffic
    (connections stay open, nothing is forwarded either way, like a network partition) until
    `restore()`, which lets the held bytes through."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(512)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="soak-proxy", daemon=True)
        self.connections = 0
        self.upstream_failures = 0
        self._transports: set[asyncio.BaseTransport] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/traces"

    def __enter__(self) -> Proxy:
        ready = threading.Event()
        self._thread.start()
        self._loop.call_soon_threadsafe(ready.set)
        ready.wait(10)
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._client, sock=self._sock)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self._transports):
                transport.abort()
            await self._server.wait_closed()
        self._open.set()

    def blackhole(self) -> None:
        self._loop.call_soon_threadsafe(self._open.clear)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._transports.add(writer.transport)
        try:
            await self._open.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                self.upstream_failures += 1  # ingest is down: the client sees its connection reset
                return
            self._transports.add(up_writer.transport)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.transport.abort()
                self._transports.discard(up_writer.transport)
        finally:
            writer.transport.abort()
            self._transports.discard(writer.transport)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self._open.wait()  # black-holed: hold the bytes until restored
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError):
            sink.transport.abort()


# ---- the full data directory --------------------------------------------------------------------


class DiskFiller:
    """Fills the data directory's filesystem (a tmpfs we mounted), or, without one, makes its
    directories read-only (effective only when not root)."""

    def __init__(self, data: Path, mounted: Path | None) -> None:
        self.data = data
        self.mounted = mounted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.filler = (mounted / "filler.bin") if mounted else None
        self.modes: dict[Path, int] = {}
        self.method = "tmpfs full" if mounted else ("read-only directories" if os.geteuid() != 0 else "none")

    def _top_up(self) -> None:
        assert self.filler is not None
        chunk = b"\0" * (1 << 20)
        with open(self.filler, "ab", buffering=0) as sink:
            while not self._stop.is_set():
                try:
                    while True:
                        sink.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                with contextlib.suppress(OSError):  # and the last partial megabyte
                    for _ in range(1024):
                        sink.write(chunk[:1024])
                self._stop.wait(0.05)  # ingest deletes rolled WAL files: take that space too

    def fill(self) -> dict[str, Any]:
        if self.filler is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._top_up, name="soak-filler", daemon=True)
            self._thread.start()
            time.sleep(0.5)
            usage = shutil.disk_usage(self.filler.parent)
            return {"method": self.method, "free_bytes": usage.free}
        if self.method == "read-only directories":
            for directory in [self.data, *[p for p in self.data.rglob("*") if p.is_dir()]]:
                self.modes[directory] = directory.stat().st_mode
                directory.chmod(0o555)
        return {"method": self.method}

    def free(self) -> None:
        if self.filler is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(10)
            self.filler.unlink(missing_ok=True)
        for directory, mode in self.modes.items():
            with contextlib.suppress(OSError):
                directory.chmod(mode)
        self.modes.clear()


@contextlib.contextmanager
def data_filesystem(
    work: Path, size_mb: int, wanted: bool, log: Log, keep: bool = False
) -> Iterator[Path | None]:
    """A tmpfs of `size_mb` at work/mnt when `wanted` and permitted (yields its path), else None."""
    if not wanted:
        yield None
        return
    mount_point = work / "mnt"
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log(f"could not mount a tmpfs ({result.stderr.strip() or result.returncode}); data on the work disk")
        yield None
        return
    try:
        yield mount_point
    finally:
        for _ in range(0 if keep else 10):
            if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(1)


# ---- the demo app with the collectors, in its own process -----------------------------------


class AppProcess:
    """The demo customer app (`soak.py app-child`), driven with JSON lines over stdin/stdout."""

    def __init__(self, work: Path, endpoint: str, options: SoakOptions) -> None:
        self.work = work
        config = {
            "endpoint": endpoint,
            "ledger": str(work / "ledger.tsv"),
            "logs": str(work / "collector-logs"),
            "answer_url_stall_s": options.answer_url_timeout_ms / 1000 + 0.5,
            "bsp_delay_ms": options.bsp_delay_ms,
        }
        self._stderr = open(work / "app.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [PYTHON, str(Path(__file__).resolve()), "app-child", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
        )
        self._lock = threading.Lock()
        self.info = self._read()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the demo app exited; see {self.work / 'app.log'}")
        return dict(json.loads(line))

    def command(self, cmd: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            assert self.process.stdin is not None
            self.process.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            self.process.stdin.flush()
            return self._read()

    def stats(self) -> dict[str, int]:
        return dict(self.command("stats")["stats"])

    def stop(self) -> dict[str, Any]:
        try:
            reply = self.command("stop")
            self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=30)
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            self._stderr.close()
        return reply


def app_child(config: dict[str, Any]) -> None:
    """The demo app process: collectors export through the proxy; a ledger records every span."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_app_main(config))


async def _app_main(config: dict[str, Any]) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    import collectors
    from collectors.tracing import CountingBatchSpanProcessor, build_resource
    from simulator.demo import DEMO_SERVICE
    from simulator.demo_app import DemoApp, DemoAppConfig
    from simulator.serving import bind_port

    # The ledger goes straight to two files, so that it costs the app no memory (its RSS is measured).
    ledger_lock = threading.Lock()
    ended_file = open(config["ledger"] + ".ended", "w")  # noqa: SIM115 (closed at the end)
    exported_file = open(config["ledger"] + ".exported", "w")  # noqa: SIM115

    class LedgerProcessor(SpanProcessor):
        """Every span the collectors end (before the batch queue, which may drop it)."""

        def on_end(self, span: ReadableSpan) -> None:
            context = span.context
            if context is None:
                return
            call_id = str((span.attributes or {}).get("minivoice.call_id", ""))
            line = (
                f"{context.trace_id:032x}\t{context.span_id:016x}\t{call_id}\t{span.name}\t"
                f"{span.start_time or 0}\t{span.end_time or 0}\n"
            )
            with ledger_lock:
                ended_file.write(line)

    class LedgerExporter(SpanExporter):
        """The OTLP exporter, noting which spans ingest acknowledged and which it gave up on."""

        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            result = self.inner.export(spans)
            state = "acked" if result is SpanExportResult.SUCCESS else "export_failed"
            now = time.time_ns()
            lines = [
                f"{span.context.trace_id:032x}\t{span.context.span_id:016x}\t{state}\t{now}\n"
                for span in spans
                if span.context is not None
            ]
            with ledger_lock:
                exported_file.writelines(lines)
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    provider = TracerProvider(resource=build_resource(DEMO_SERVICE), shutdown_on_exit=False)
    provider.add_span_processor(LedgerProcessor())
    provider.add_span_processor(
        CountingBatchSpanProcessor(
            LedgerExporter(OTLPSpanExporter(endpoint=config["endpoint"])),
            schedule_delay_millis=config["bsp_delay_ms"],
        )
    )
    log_files = collectors.write_logs_to(config["logs"])

    class SoakDemoApp(DemoApp):
        async def restart_receiver(self, down_s: float) -> int:
            """Stop the stream receiver (open streams get 1001 going away), start it again."""
            listener = self._receiver
            assert listener.server is not None
            open_streams = len(listener.server.connections)
            listener.server.close()
            await listener.server.wait_closed()
            await asyncio.sleep(down_s)
            sock = bind_port(self.config.host, listener.port)
            handler = self._instrument(self._receive, self.config.tracer_provider, None)
            self._receiver = await self._listen(sock, self.tls.server_context(), handler)
            return open_streams

    app_config = DemoAppConfig(
        tracer_provider=provider,
        answer_url_stall_s=config["answer_url_stall_s"],
        http_port_option=None,
        receiver_port_option=None,
    )
    loop = asyncio.get_running_loop()

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async with SoakDemoApp(app_config) as app:
        reply(
            {
                "answer_url": app.answer_url,
                "webhook_url": app.webhook_url,
                "receiver_port": app.receiver_port,
                "ca_pem": app.tls.ca_pem.decode("ascii"),
            }
        )
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            cmd = command["cmd"]
            if cmd == "stats":
                reply({"stats": collectors.stats()})
            elif cmd == "restart_receiver":
                closed = await app.restart_receiver(float(command.get("down_s", 1.0)))
                reply({"open_streams_closed": closed})
            elif cmd == "flush":
                flushed = await asyncio.to_thread(provider.force_flush, 60_000)
                reply({"flushed": flushed})
            elif cmd == "stop":
                break
    await asyncio.to_thread(provider.shutdown)
    log_files.close()
    with ledger_lock:
        ended_file.close()
        exported_file.close()
    reply({"stats": collectors.stats(), "ledger": config["ledger"]})


# ---- the simulator side ---------------------------------------------------------------------------


def soak_mix(webhook_faults: bool, seed: int) -> Callable[[int], Any]:
    """Scenario of the i-th call: every scenario in each block of 40 calls, the rest happy; with
    webhook faults, 3 more duplicated and 3 more reordered-webhook calls per block."""
    from simulator.scenarios import SCENARIOS

    faults = [
        s
        for s in SCENARIOS.values()
        if s.name != "happy" and (webhook_faults or s.name not in WEBHOOK_FAULT_SCENARIOS)
    ]
    if webhook_faults:
        faults += [SCENARIOS[name] for name in WEBHOOK_FAULT_SCENARIOS] * 3
    block = faults + [SCENARIOS["happy"]] * (40 - len(faults))
    rng = random.Random(seed)
    blocks: dict[int, list[Any]] = {}

    def scenario(index: int) -> Any:
        number, offset = divmod(index, len(block))
        if number not in blocks:
            shuffled = list(block)
            rng.shuffle(shuffled)
            blocks[number] = shuffled
        return blocks[number][offset]

    return scenario


@dataclass
class Placed:
    """Calls placed so far, and how many were in flight over time."""

    outcomes: list[Any] = field(default_factory=list)
    in_flight: int = 0
    samples: list[int] = field(default_factory=list)


async def place_calls(platform: Any, options: SoakOptions, placed: Placed, stop: asyncio.Event) -> None:
    """Keep `concurrency` calls in flight until `stop` is set (or `calls` were placed)."""
    mix = soak_mix("webhooks" in options.faults, options.seed)
    slots = asyncio.Semaphore(options.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def one(scenario: Any) -> None:
        try:
            placed.outcomes.append(await platform.place_call(scenario))
        finally:
            placed.in_flight -= 1
            slots.release()

    index = 0
    while not stop.is_set() and (options.calls is None or index < options.calls):
        await slots.acquire()
        if stop.is_set():
            slots.release()
            break
        placed.in_flight += 1
        task = asyncio.create_task(one(mix(index)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


class Soak:
    """One soak run: start everything, place calls with faults, stop, verify. See module doc."""

    def __init__(self, options: SoakOptions, log: Log = print) -> None:
        self.options = options
        self.log = log
        self.work = options.work_dir
        self.windows: list[FaultWindow] = []
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self.problems: list[str] = []
        self.started_ns = 0

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> SoakReport:
        options = self.options
        self.work.mkdir(parents=True, exist_ok=True)
        report = SoakReport(
            options={k: (sorted(v) if isinstance(v, frozenset) else v) for k, v in asdict(options).items()}
        )
        report.options["work_dir"] = str(options.work_dir)
        wanted = "disk_full" in options.faults
        with data_filesystem(self.work, options.tmpfs_mb, wanted, self.log, options.keep_mount) as mounted:
            data = (mounted or self.work) / "data"
            self.data = data
            env = {
                **os.environ,
                "CALLSCOPE_GRACE_SECONDS": str(options.grace_s),
                "CALLSCOPE_ANSWER_URL_TIMEOUT_MS": str(options.answer_url_timeout_ms),
                "CALLSCOPE_OTLP_ENDPOINTS": "",
            }
            env.pop("CALLSCOPE_INGEST_TOKEN", None)
            self.env = env
            self.filler = DiskFiller(data, mounted)
            self.ingest = IngestProcess(
                data, free_port(), self.work / "ingest.log", options.compact_interval_s
            )
            t0 = time.monotonic()
            report.timings["ingest_start"] = self.ingest.start()
            try:
                with Proxy(self.ingest.port) as proxy:
                    self.proxy = proxy
                    self.app = AppProcess(self.work, proxy.url, options)
                    self.build = BuildProcess(data, env, options.follow_interval_s, self.work / "build.log")
                    try:
                        if options.follow:
                            self.build.start()
                        self.log(
                            f"ingest :{self.ingest.port} (data {data}{', tmpfs' if mounted else ''}), proxy "
                            f":{proxy.port}, demo app pid {self.app.pid}, build --follow "
                            f"pid {self.build.pid}; placing calls"
                        )
                        placed = asyncio.run(self._drive(report))
                        report.timings["place_calls"] = (time.time_ns() - self.started_ns) / NS
                        self._finish_app(report)
                        self._wait_for_verdicts()
                        self.build.check()
                        report.processes["build --follow restarts after dying"] = self.build.deaths
                        self._sample_rss(final=True)
                    finally:
                        build_code = self.build.stop()
                        if self.app.process.poll() is None:
                            self.app.stop()
            finally:
                self.filler.free()
                ingest_code = self.ingest.stop()
            report.processes["ingest exit code at SIGTERM"] = ingest_code
            report.processes["build --follow exit code at SIGINT"] = build_code
            report.processes["ingest children alive after kill -9"] = self.ingest.orphans
            self._leftover_processes(report)
            self._finish_pipeline(report)
            self._verify(report, placed)
            report.privacy = scan_logs(self.work)
            report.timings["total"] = time.monotonic() - t0
            report.problems = self.problems
        return report

    async def _drive(self, report: SoakReport) -> Placed:
        from simulator.platform import Platform, PlatformConfig
        from simulator.serving import client_context
        from simulator.stream import StreamOptions
        from simulator.webhooks import WebhookOptions

        options = self.options
        info = self.app.info
        context = client_context(ca_pem=info["ca_pem"].encode("ascii"))
        config = PlatformConfig(
            answer_url=info["answer_url"],
            webhook_url=info["webhook_url"],
            answer_url_timeout_s=options.answer_url_timeout_ms / 1000,
            media_seconds=options.media_seconds,
            speed=options.speed,
            ring_seconds=options.media_seconds,
            ssl_context=context,
            stream=StreamOptions(ssl_context=context, open_timeout_s=10),
            webhooks=WebhookOptions(backoff_s=0.2),
        )
        placed = Placed()
        stop = asyncio.Event()
        self.started_ns = time.time_ns()
        async with Platform(config) as platform:
            placing = asyncio.create_task(place_calls(platform, options, placed, stop))
            faults = asyncio.create_task(self._faults(stop))
            monitor = asyncio.create_task(self._monitor(placed, stop))
            if options.calls is None:
                await asyncio.wait({placing}, timeout=options.seconds)
                stop.set()
            await placing
            stop.set()
            await faults
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        report.calls = len(placed.outcomes)
        steady = placed.samples[2:] or placed.samples
        if steady:
            report.concurrency = {
                "median": statistics.median(steady),
                "min": min(steady),
                "max": max(steady),
            }
        return placed

    async def _monitor(self, placed: Placed, stop: asyncio.Event) -> None:
        last_rss = 0.0
        while True:
            placed.samples.append(placed.in_flight)
            if time.monotonic() - last_rss >= self.options.sample_every_s:
                last_rss = time.monotonic()
                await asyncio.to_thread(self._sample_rss)
                await asyncio.to_thread(self.build.check)
            await asyncio.sleep(1.0)

    def _sample_rss(self, final: bool = False) -> None:
        pids = {
            "ingest (with its roll-up worker)": (self.ingest.pid, True),
            "build --follow": (self.build.pid, False),
            "demo app + collectors": (self.app.pid, False),
            "simulator (this process)": (os.getpid(), False),
        }
        elapsed = (time.time_ns() - self.started_ns) / NS
        for name, (pid, children) in pids.items():
            value = rss_mb(pid, children)
            if value:
                self.samples.setdefault(name, []).append((elapsed, value))

    # -- faults ------------------------------------------------------------------------------------

    async def _faults(self, stop: asyncio.Event) -> None:
        for name, at in self.options.fault_schedule():
            delay = self.started_ns / NS + at - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set() and self.options.calls is None:
                self.log(f"fault {name} at +{at:.0f} s skipped: the run ended first")
                continue
            window = FaultWindow(name, time.time_ns())
            window.stats_before = await asyncio.to_thread(self.app.stats)
            self.log(f"+{(window.start_ns - self.started_ns) / NS:.0f} s: fault {name}")
            try:
                await getattr(self, f"_fault_{name}")(window)
            except Exception as exc:  # report it and go on with the soak
                self.problems.append(f"fault {name} failed: {type(exc).__name__}: {exc}")
            window.end_ns = window.end_ns or time.time_ns()
            self.windows.append(window)
            await asyncio.sleep(self.options.fault_settle_s)
            window.stats_after = await asyncio.to_thread(self.app.stats)

    async def _fault_ingest_kill(self, window: FaultWindow) -> None:
        window.details["children_alive_after_kill"] = await asyncio.to_thread(self.ingest.kill9)
        await asyncio.sleep(self.options.ingest_down_s)
        wal_files = len(list((self.data / "wal").glob("wal-*.log")))
        window.details["wal_files_left_by_the_kill"] = wal_files
        window.details["restart_s"] = round(await asyncio.to_thread(self.ingest.start), 2)
        window.end_ns = time.time_ns()

    async def _fault_unreachable(self, window: FaultWindow) -> None:
        self.proxy.blackhole()
        await asyncio.sleep(self.options.unreachable_s)
        self.proxy.restore()
        window.end_ns = time.time_ns()

    async def _fault_receiver_restart(self, window: FaultWindow) -> None:
        reply = await asyncio.to_thread(
            self.app.command, "restart_receiver", down_s=self.options.receiver_down_s
        )
        window.end_ns = time.time_ns()
        window.details["open_streams_closed"] = reply.get("open_streams_closed")

    async def _fault_disk_full(self, window: FaultWindow) -> None:
        health = await asyncio.to_thread(self.ingest.health)
        window.details.update(await asyncio.to_thread(self.filler.fill))
        await asyncio.sleep(self.options.disk_full_s)
        during = await asyncio.to_thread(self.ingest.health)
        await asyncio.to_thread(self.filler.free)
        window.end_ns = time.time_ns()
        await asyncio.sleep(10)
        after = await asyncio.to_thread(self.ingest.health)

        def errors(h: dict[str, Any], status: str) -> int:
            return int(h.get("errors", {}).get(status, 0))

        window.details["ingest_503_during"] = errors(during, "503") - errors(health, "503")
        window.details["ingest_503_after_recovery"] = errors(after, "503") - errors(during, "503")
        window.details["roll_failures"] = int(after.get("roll_failures", 0)) - int(
            health.get("roll_failures", 0)
        )
        window.details["wal_files_waiting_10s_after"] = len(list((self.data / "wal").glob("wal-*.log")))
        window.details["ingest_alive"] = (
            self.ingest.process is not None and self.ingest.process.poll() is None
        )

    # -- the end -----------------------------------------------------------------------------------

    def _finish_app(self, report: SoakReport) -> None:
        flushed = self.app.command("flush").get("flushed")
        if not flushed:
            self.problems.append("the collectors could not flush every span within 60 s")
        reply = self.app.stop()
        report.collectors = dict(reply.get("stats", {}))

    def _wait_for_verdicts(self) -> None:
        # Final verdicts need the grace period after the last span (webhook_missing) and the
        # settle time after call.completed; then two --follow steps.
        wait = self.options.grace_s + 2 * self.options.follow_interval_s + 3
        self.log(f"waiting {wait:.0f} s for the last verdicts (grace {self.options.grace_s} s)")
        time.sleep(wait)

    def _leftover_processes(self, report: SoakReport) -> None:
        alive = []
        for pid in self.ingest.orphans:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
                    process.kill()  # ours: left behind by a kill -9 of ingest
        report.processes["orphans of killed ingest still alive at the end (killed now)"] = alive

    def _finish_pipeline(self, report: SoakReport) -> None:
        started = time.monotonic()
        compact = run_cli(["compact", "--data", str(self.data)], self.env)
        report.timings["compact"] = time.monotonic() - started
        if compact.returncode != 0:
            self.problems.append(f"callscope compact exited {compact.returncode}: {compact.stderr[-500:]}")
        report.processes["compact"] = compact.stdout.strip().splitlines()[-1:] if compact.stdout else []
        started = time.monotonic()
        build = run_cli(["build", "--data", str(self.data)], self.env)
        report.timings["final_build"] = time.monotonic() - started
        if build.returncode != 0:
            self.problems.append(f"final callscope build exited {build.returncode}: {build.stderr[-500:]}")
        warm = min(20.0, self.options.seconds / 10)  # past start-up: imports, first calls
        for name, samples in self.samples.items():
            steady = [value for at, value in samples if at >= warm] or [value for _at, value in samples]
            if steady:
                middle = steady[len(steady) // 2]
                report.rss_mb[name] = {
                    "start": steady[0],
                    "middle": middle,
                    "end": steady[-1],
                    "max": max(steady),
                }
                report.rss_series[name] = [(round(at), round(value)) for at, value in samples]

    # -- verification ------------------------------------------------------------------------------

    def _verify(self, report: SoakReport, placed: Placed) -> None:
        from pipeline.storage import DataDir

        outcomes = placed.outcomes
        ledger = self.work / "ledger.tsv"
        with DataDir(self.data).connect_readonly() as con:
            con.execute(
                "CREATE TABLE ended AS SELECT * FROM read_csv(?, delim='\t', header=false, quote='', "
                "columns={'trace_id': 'VARCHAR', 'span_id': 'VARCHAR', 'call_id': 'VARCHAR', "
                "'name': 'VARCHAR', 'start_ns': 'BIGINT', 'end_ns': 'BIGINT'})",
                [f"{ledger}.ended"],
            )
            con.execute(
                "CREATE TABLE exported AS SELECT * FROM read_csv(?, delim='\t', header=false, quote='', "
                "columns={'trace_id': 'VARCHAR', 'span_id': 'VARCHAR', 'state': 'VARCHAR', "
                "'exported_ns': 'BIGINT'})",
                [f"{ledger}.exported"],
            )
            con.execute(
                "CREATE TABLE ledger AS SELECT e.*, coalesce(x.state, 'never_exported') AS state, "
                "coalesce(x.exported_ns, 0) AS exported_ns "
                "FROM ended e LEFT JOIN exported x USING (trace_id, span_id)"
            )
            con.execute(
                "CREATE TABLE stored AS "
                "SELECT trace_id, span_id, count(*) AS copies FROM spans_raw GROUP BY ALL"
            )
            con.execute(
                "CREATE TABLE spans_ledger AS SELECT l.*, coalesce(s.copies, 0) AS copies "
                "FROM ledger l LEFT JOIN stored s USING (trace_id, span_id)"
            )
            totals = con.execute(
                "SELECT count(*), count(*) FILTER (state = 'acked'), "
                "count(*) FILTER (state = 'export_failed'), count(*) FILTER (state = 'never_exported'), "
                "count(*) FILTER (state = 'acked' AND copies = 0), count(*) FILTER (copies > 1), "
                "count(*) FILTER (state <> 'acked' AND copies > 0) FROM spans_ledger"
            ).fetchone()
            assert totals is not None
            raw = con.execute(
                "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans_raw"
            ).fetchone()
            view = con.execute("SELECT count(*) FROM spans").fetchone()
            assert raw is not None and view is not None
            report.spans = {
                "ended": totals[0],
                "acked": totals[1],
                "export_failed": totals[2],
                "never_exported": totals[3],
                "acked_not_stored": totals[4],
                "stored_more_than_once": totals[5],
                "failed_but_stored": totals[6],
                "stored_rows": raw[0],
                "stored_distinct": raw[1],
                "spans_view_rows": view[0],
            }
            lost_calls = {
                row[0]
                for row in con.execute(
                    "SELECT DISTINCT call_id FROM spans_ledger WHERE copies = 0 AND call_id <> ''"
                ).fetchall()
            }
            call_ids = [o.call_id for o in outcomes]
            relation = con.execute(
                "SELECT call_id, verdict, reason, is_final FROM calls "
                "WHERE call_id IN (SELECT unnest(?::VARCHAR[]))",
                [call_ids],
            )
            rows = {r[0]: r for r in relation.fetchall()}
            per_span = con.execute("SELECT end_ns, state, copies, exported_ns FROM spans_ledger").fetchall()
            # The app's own answer_url time; the scenario that stalls on purpose left out.
            stalled = [o.call_id for o in outcomes if o.scenario == "answer_url_timeout"]
            served = con.execute(
                "SELECT start_ns, (end_ns - start_ns) / 1e6 FROM ledger WHERE name = 'answer_url' "
                "AND call_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                [stalled],
            ).fetchall()
        self._score(report, outcomes, rows, lost_calls, per_span=per_span, served=served)

    @staticmethod
    def _expected(outcome: Any) -> tuple[str, str | None]:
        """The verdict the call should get: its scenario's, unless the receiver restart broke its
        stream first (the first failing step in the debug order wins)."""
        from pipeline.rules import FAILURE_VERDICTS, STREAM_DROPPED, STREAM_NOT_CONNECTED

        order = {verdict: rank for rank, verdict in enumerate(FAILURE_VERDICTS)}
        expected = str(outcome.expected_verdict)
        rank = order.get(expected, len(order))  # ok, no_stream: after every failure
        if outcome.stream_requested:
            if not outcome.connected and rank > order[STREAM_NOT_CONNECTED]:
                return STREAM_NOT_CONNECTED, "the stream could not connect (receiver restarting)"
            dropped = outcome.closed_by == "receiver" and outcome.close_code != 1000 and not outcome.stop_sent
            if dropped and rank > order[STREAM_DROPPED]:
                return STREAM_DROPPED, f"the receiver closed the stream with {outcome.close_code}"
        return expected, None

    def _score(
        self,
        report: SoakReport,
        outcomes: list[Any],
        rows: dict[str, tuple[Any, ...]],
        lost_calls: set[str],
        *,
        per_span: list[tuple[Any, ...]],
        served: list[tuple[int, float]],
    ) -> None:
        def score(selected: list[Any]) -> dict[str, Any]:
            result: Counter[str] = Counter()
            mismatches = []
            adjusted: Counter[str] = Counter()
            for outcome in selected:
                expected, why = self._expected(outcome)
                if why:
                    adjusted[why.split(" with ")[0]] += 1
                row = rows.get(outcome.call_id)
                actual = row[1] if row else None
                complete = outcome.call_id not in lost_calls
                bucket = "complete" if complete else "incomplete"
                result[bucket] += 1
                if actual == expected:
                    result[f"correct_{bucket}"] += 1
                elif complete:
                    mismatches.append(
                        f"{outcome.call_id} {outcome.scenario}: expected {expected}, got {actual} "
                        f"({row[2] if row else 'no calls row'})"
                    )
            return {
                "calls": len(selected),
                **{
                    k: result[k] for k in ("complete", "correct_complete", "incomplete", "correct_incomplete")
                },
                "adjusted": sum(adjusted.values()),
                "adjusted_why": dict(adjusted),
                "mismatches": mismatches,
            }

        report.verdicts = score(outcomes)
        report.verdicts["not_final"] = sum(1 for r in rows.values() if not r[3])
        report.verdicts["by_scenario"] = dict(Counter(o.scenario for o in outcomes))
        windows = sorted(self.windows, key=lambda w: w.start_ns)
        in_fault: list[tuple[int, int]] = [(w.start_ns, w.end_ns + 5 * NS) for w in windows]

        def request_start(outcome: Any) -> int | None:
            step = next((s for s in outcome.steps if s.stage == "answer_url"), None)
            if step is None or outcome.answer_url_latency_ms is None or outcome.answer_url_error:
                return None
            return int(step.at_ns - outcome.answer_url_latency_ms * 1e6)

        warmup = self.started_ns + 10 * NS
        baseline = [
            o.answer_url_latency_ms
            for o in outcomes
            if (t := request_start(o)) is not None
            and t > warmup
            and not any(a <= t <= b for a, b in in_fault)
        ]
        report.latency_ms["baseline"] = latency_summary(baseline)
        # The same from the app's side: the answer_url span's duration (the collector included).
        report.latency_ms["baseline_served"] = latency_summary(
            [ms for t, ms in served if t > warmup and not any(a <= t <= b for a, b in in_fault)]
        )
        for window in windows:
            latencies = [
                o.answer_url_latency_ms
                for o in outcomes
                if (t := request_start(o)) is not None and window.start_ns <= t <= window.end_ns
            ]
            overlapping = [
                o for o in outcomes if o.started_ns <= window.end_ns and o.ended_ns >= window.start_ns
            ]
            spans: Counter[str] = Counter()
            for end_ns, state, copies, _exported_ns in per_span:
                if window.start_ns <= end_ns <= window.end_ns:
                    spans["ended"] += 1
                    spans[state] += 1
                    if state == "acked" and copies == 0:
                        spans["acked_not_stored"] += 1
            first_ack = min(
                (
                    exported
                    for _e, state, _c, exported in per_span
                    if state == "acked" and exported > window.end_ns
                ),
                default=0,
            )
            if first_ack:
                window.details["first_acknowledged_export_after_s"] = round(
                    (first_ack - window.end_ns) / NS, 2
                )
            drops = {
                k: window.stats_after.get(k, 0) - window.stats_before.get(k, 0)
                for k in (
                    "spans_exported",
                    "spans_dropped_export_failed",
                    "spans_dropped_queue_full",
                    "export_failures",
                    "internal_errors",
                )
            }
            calls = score(overlapping)
            calls.pop("mismatches")
            report.faults.append(
                {
                    "name": window.name,
                    "at_s": (window.start_ns - self.started_ns) / NS,
                    "seconds": (window.end_ns - window.start_ns) / NS,
                    "latency_ms": latency_summary(latencies),
                    "served_ms": latency_summary(
                        [ms for t, ms in served if window.start_ns <= t <= window.end_ns]
                    ),
                    "spans": dict(spans),
                    "calls": calls,
                    "details": window.details,
                    "collector_drops": drops,
                }
            )


def scan_logs(work: Path) -> dict[str, Any]:
    """Search every log of the run (the collectors' three JSON logs, the app's, ingest's and the
    build's) for the simulator's phone numbers, media payloads and clear stream_url tokens."""
    import re

    from simulator.audio import tone_payloads
    from simulator.messages import CallInfo

    call = CallInfo("any")
    numbers = {re.sub(r"\D", "", n)[-10:] for n in (call.from_number, call.to_number)}
    payloads = {payload[:24] for payload in tone_payloads()}
    findings: Counter[str] = Counter()
    scanned = 0
    tokens: set[str] = set()
    for path in sorted(work.glob("*.log")) + sorted(work.glob("collector-logs/*")):
        text = path.read_text(errors="replace")
        scanned += len(text)
        findings.update(f"phone number in {path.name}" for n in numbers if n in text)
        findings.update(f"media payload in {path.name}" for p in payloads if p in text)
        tokens.update(t for t in re.findall(r"token=([A-Za-z0-9_\-]+)", text) if t != "REDACTED")
    findings.update(f"clear token {t[:4]}..." for t in tokens)
    return {"bytes_scanned": scanned, "findings": dict(findings)}


# ---- entry points -------------------------------------------------------------------------------


def run_soak(options: SoakOptions, log: Log = print) -> SoakReport:
    """Run one soak (blocking) and return its report."""
    return Soak(options, log).run()


def parse_args(argv: Sequence[str]) -> tuple[SoakOptions, Path | None, bool]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to place calls (default 5)")
    parser.add_argument("--concurrency", type=int, default=100, help="calls in flight (default 100)")
    parser.add_argument("--media-seconds", type=float, default=4.0, help="audio per call (default 4)")
    parser.add_argument("--speed", type=float, default=1.0, help="media pacing, 1 = real time (default 1)")
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated, from {', '.join(FAULTS)}"
    )
    parser.add_argument("--unreachable-seconds", type=float, default=30.0)
    parser.add_argument("--disk-full-seconds", type=float, default=15.0)
    parser.add_argument("--ingest-down-seconds", type=float, default=3.0)
    parser.add_argument("--grace", type=int, default=30, help="CALLSCOPE_GRACE_SECONDS for the build")
    parser.add_argument("--tmpfs-mb", type=int, default=1024, help="size of the data directory's tmpfs")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    faults = frozenset(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = faults - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="callscope-soak-"))
    options = SoakOptions(
        work_dir=work,
        seconds=args.minutes * 60,
        concurrency=args.concurrency,
        media_seconds=args.media_seconds,
        speed=args.speed,
        faults=faults,
        unreachable_s=args.unreachable_seconds,
        disk_full_s=args.disk_full_seconds,
        ingest_down_s=args.ingest_down_seconds,
        grace_s=args.grace,
        tmpfs_mb=args.tmpfs_mb,
        keep_mount=args.keep,
    )
    return options, args.report, args.keep or args.work is not None


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["app-child"]:
        app_child(json.loads(argv[1]))
        return 0
    options, report_path, keep = parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    report = run_soak(options, log)
    print()
    for line in report.lines():
        print(line)
    if report_path is not None:
        report_path.write_text(json.dumps(asdict(report), indent=2, default=str))
    if not keep:
        shutil.rmtree(options.work_dir, ignore_errors=True)
    else:
        print(f"work directory kept: {options.work_dir}")
    return 1 if report.acknowledged_lost or report.duplicated_after_compaction else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
