"""Types of the C decoder (pipeline/_otlp_fast.c); see pipeline.otlp for how it is used."""

from collections.abc import Sequence

class OwnedBuffer:
    """Read-only bytes made by the decoder (buffer protocol; pa.py_buffer wraps it, no copy)."""

#: validity bitmap (None: no nulls), int32 offsets, data, null count
StringColumn = tuple[OwnedBuffer | None, OwnedBuffer, OwnedBuffer, int]

#: rows, string columns, start_ns, end_ns, event offsets, event count, event times, and the
#: `minivoice` struct column as an "arrow_array" PyCapsule (Arrow C data interface)
Columns = tuple[
    int, tuple[StringColumn, ...], OwnedBuffer, OwnedBuffer, OwnedBuffer, int, OwnedBuffer, object
]

def walk(body: bytes, /) -> Columns | None: ...
def walk_records(
    records: Sequence[tuple[bytes, int]], /
) -> (
    tuple[
        int,
        tuple[StringColumn, ...],
        OwnedBuffer,
        OwnedBuffer,
        OwnedBuffer,
        int,
        OwnedBuffer,
        object,
        OwnedBuffer,
    ]
    | None
):
    """walk() of several requests at once; the last item is the int64 ingested_at_ns column."""

def count_valid(body: bytes, /) -> int | None: ...
def json_double(value: float, /) -> bytes: ...
def set_minivoice_fields(fields: Sequence[tuple[str, int]], /) -> None: ...
