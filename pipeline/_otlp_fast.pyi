"""Types of the C decoder (pipeline/_otlp_fast.c); see pipeline.otlp for how it is used."""

class OwnedBuffer:
    """Read-only bytes made by the decoder (buffer protocol; pa.py_buffer wraps it, no copy)."""

#: validity bitmap (None: no nulls), int32 offsets, data, null count
StringColumn = tuple[OwnedBuffer | None, OwnedBuffer, OwnedBuffer, int]

def walk(
    body: bytes, /
) -> tuple[int, tuple[StringColumn, ...], OwnedBuffer, OwnedBuffer, OwnedBuffer, int, OwnedBuffer] | None: ...
def count_valid(body: bytes, /) -> int | None: ...
def json_double(value: float, /) -> bytes: ...
