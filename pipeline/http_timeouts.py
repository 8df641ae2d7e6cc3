"""A request-header deadline for uvicorn (its httptools protocol has none).

uvicorn times out an idle keep-alive connection, and ingest times out a slow body (408 after
`read_timeout_s`), but nothing bounds the time a client takes to send its request line and
headers: a client that connects and trickles header bytes (slowloris), or sends nothing at all,
holds its connection forever. `header_timeout_protocol(seconds)` returns uvicorn's
`HttpToolsProtocol` with a deadline armed when the connection opens and again when the next
request on a keep-alive connection begins; when it passes before the headers are complete, the
client gets `408 Request Timeout` with `Connection: close` and the connection is closed.

Use it as `uvicorn.Config(..., http=header_timeout_protocol(30.0, on_timeout=...))`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _timeout_response(seconds: float) -> bytes:
    body = (
        f"the request line and headers did not arrive within {seconds:g} s; send the whole request promptly\n"
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def header_timeout_protocol(
    seconds: float, *, on_timeout: Callable[[], None] | None = None
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request headers take over
    `seconds` (408). `on_timeout` is called for each (e.g. to count it)."""
    if seconds <= 0:
        raise ValueError(f"the header timeout must be positive, got {seconds}")
    response = _timeout_response(seconds)

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_deadline is None:  # the next request on a keep-alive connection
                self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._header_deadline = self.loop.call_later(seconds, self._header_deadline_passed)

        def _cancel_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _header_deadline_passed(self) -> None:
            self._header_deadline = None
            # A request whose headers are complete is the application's (its body has its own
            # deadline); an idle keep-alive connection is uvicorn's own timeout's.
            if self.cycle is not None and not self.cycle.response_complete:
                return
            if self.transport.is_closing():
                return
            if on_timeout is not None:
                on_timeout()
            self.transport.write(response)
            self.transport.close()

    HeaderTimeoutProtocol.__name__ = HeaderTimeoutProtocol.__qualname__ = "HeaderTimeoutProtocol"
    return HeaderTimeoutProtocol
