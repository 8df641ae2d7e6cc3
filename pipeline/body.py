"""Bounded request bodies: read (and gunzip) at most a limit, without inflating a gzip bomb.

`BodyReader` is fed the chunks an ASGI server delivers and keeps only the decompressed bytes up to
`limit`; it stops, with `BodyTooLarge`, as soon as the output would pass the limit, so a small
compressed body that inflates to gigabytes costs at most `limit` bytes of memory.
"""

from __future__ import annotations

import zlib


class BodyError(ValueError):
    """The body cannot be read (bad gzip data). The message says why."""


class BodyTooLarge(BodyError):
    """The body, after decompression, is larger than the limit."""


class UnsupportedEncoding(BodyError):
    """A Content-Encoding other than gzip or identity."""


class BodyReader:
    """Accumulates a request body, decompressing gzip, and enforces a size limit on the result."""

    def __init__(self, limit: int, content_encoding: str = "") -> None:
        encoding = content_encoding.strip().lower()
        if encoding in ("", "identity"):
            self._gzip = False
        elif encoding in ("gzip", "x-gzip"):
            self._gzip = True
        else:
            raise UnsupportedEncoding(
                f"Content-Encoding {content_encoding!r} is not supported (use gzip or none)"
            )
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._received = 0
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if self._gzip else None

    @property
    def size(self) -> int:
        """Decompressed bytes so far."""
        return self._size

    @property
    def received(self) -> int:
        """Bytes received on the wire so far."""
        return self._received

    def _too_large(self) -> BodyTooLarge:
        what = "decompressed body" if self._gzip else "body"
        return BodyTooLarge(f"{what} is larger than the limit of {self.limit} bytes")

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            raise self._too_large()
        if data:
            self._parts.append(data)

    def feed(self, chunk: bytes) -> None:
        """Add a chunk as received. Raises BodyTooLarge or BodyError."""
        self._received += len(chunk)
        if self._inflater is None:
            self._add(chunk)
            return
        data = chunk
        while data:
            # Ask for at most one byte more than the room left: enough to detect overflow, no more.
            try:
                out = self._inflater.decompress(data, self.limit - self._size + 1)
            except zlib.error as exc:
                raise BodyError(f"body is not valid gzip data: {exc}") from exc
            self._add(out)
            if self._inflater.eof:
                rest = self._inflater.unused_data
                if rest:  # concatenated gzip members are one stream (RFC 1952)
                    self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                data = rest
            else:
                data = self._inflater.unconsumed_tail

    def finish(self) -> bytes:
        """The whole decompressed body. Raises BodyError if the gzip stream is truncated."""
        if self._inflater is not None and not self._inflater.eof:
            if self._received == 0:
                return b""
            raise BodyError("gzip body is truncated (the stream did not end)")
        return b"".join(self._parts)
