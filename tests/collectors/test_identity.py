"""The call-id to trace-id derivation, against the test vectors in docs/spans.md."""

from __future__ import annotations

import re
from pathlib import Path

from collectors import call_root_context, call_root_span_id, call_trace_id
from collectors.identity import call_root_span_id_hex, call_trace_id_hex

DOCS = Path(__file__).resolve().parents[2] / "docs" / "spans.md"


def test_vector_call_123() -> None:
    assert call_trace_id_hex("call_123") == "cf5287d0ab1438a15543223e69e6f962"
    assert call_root_span_id_hex("call_123") == "b7bfec47d932d3c7"
    assert call_trace_id("call_123") == 275578718127578120123551942384017668450
    assert call_root_span_id("call_123") == 13240561222823367623


def test_docs_vectors_match_the_code() -> None:
    rows = re.findall(r"^\| `([^`]*)`[^|]*\| `([0-9a-f]{32})` \| `([0-9a-f]{16})` \|", DOCS.read_text(), re.M)
    assert len(rows) >= 2
    for call_id, trace_hex, span_hex in rows:
        assert (call_trace_id_hex(call_id), call_root_span_id_hex(call_id)) == (trace_hex, span_hex)


def test_root_context_is_sampled_and_remote() -> None:
    context = call_root_context("call_123")
    assert context.is_valid and context.is_remote and context.trace_flags.sampled
    assert context.trace_id == call_trace_id("call_123")
