"""Fixtures of the pipeline tests: span rows made with the real OTel SDK, and a data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.storage import DataDir
from tests.pipeline.timeline_spans import SpanFactory, span_factory


@pytest.fixture
def spans() -> Iterator[SpanFactory]:
    """A span factory (`tests.pipeline.timeline_spans`)."""
    with span_factory() as factory:
        yield factory


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    """An empty data directory, without fsync (faster; durability is tested elsewhere)."""
    return DataDir(tmp_path / "data", fsync=False)
