"""Serving helpers shared by the demo app and the tests: ports, TLS, uvicorn inside a running loop.

Ports are bound up front, before any server starts, so a busy port is reported once, clearly,
with the flag that changes it (`PortInUse`), instead of as a traceback from deep inside uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
import uvicorn
from starlette.types import ASGIApp


class PortInUse(OSError):
    """A port the demo needs is taken. The message names the port and the option that changes it."""

    def __init__(self, host: str, port: int, option: str | None, detail: str = "") -> None:
        self.host, self.port, self.option = host, port, option
        hint = f"; choose another with {option} PORT (0 picks a free one)" if option else ""
        super().__init__(
            f"port {port} on {host} is already in use{hint}" + (f" ({detail})" if detail else "")
        )


def bind_port(host: str, port: int, option: str | None = None) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one. Raises `PortInUse`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted demo reuse ports in TIME_WAIT, but still refuses a port
        # someone is listening on, which is the error we want to report.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise PortInUse(host, port, option) from exc
        raise
    sock.setblocking(False)
    return sock


def closed_port(host: str = "127.0.0.1") -> int:
    """A port where nothing listens right now (bound, then released), for "receiver down"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def port_of(sock: socket.socket) -> int:
    """The port a bound socket listens on."""
    port: int = sock.getsockname()[1]
    return port


@dataclass(slots=True)
class TlsMaterial:
    """A private CA and a server certificate it issued, generated in memory at start-up."""

    ca: trustme.CA
    cert: trustme.LeafCert

    @classmethod
    def generate(cls, *hosts: str) -> TlsMaterial:
        """A fresh CA and a certificate for `hosts` (default 127.0.0.1 and localhost)."""
        ca = trustme.CA(organization_name="callscope demo CA")
        return cls(ca, ca.issue_cert(*(hosts or ("127.0.0.1", "localhost"))))

    def server_context(self) -> ssl.SSLContext:
        """The context a TLS listener serves this certificate with."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and only this CA)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM: what a client must trust."""
        return self.ca.cert_pem.bytes()

    def write_ca(self, path: Path) -> Path:
        """Write the CA certificate to `path` (for `--ca FILE`)."""
        path.write_bytes(self.ca_pem)
        return path


def client_context(ca_file: str | Path | None = None, ca_pem: bytes | None = None) -> ssl.SSLContext:
    """A TLS client context trusting the system store plus an optional extra CA (file or PEM)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    if ca_pem is not None:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return context


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """An ASGI app served by uvicorn on an already-bound socket, inside the running event loop."""

    def __init__(
        self, app: ASGIApp, sock: socket.socket, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            ws="none",
            ssl_context_factory=(lambda _config, _default: ssl_context) if ssl_context is not None else None,
        )
        config.load()
        self._server = _EmbeddedServer(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None
        self.port = port_of(sock)

    async def start(self) -> None:
        """Start serving; returns once the server accepts connections."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the start-up error
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the socket."""
        if self._task is None:
            self._sock.close()
            return
        self._server.should_exit = True
        await self._task
        self._task = None
