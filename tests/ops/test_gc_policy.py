"""The process's collector thresholds (docs/design.md#collector-thresholds): set by `python -m edge run`,
never by an embedding program's `edge.serve`."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from edge.ops.gc_policy import GC_THRESHOLDS, tune_collector


@pytest.fixture
def saved_thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield before
    gc.set_threshold(*before)


def test_tune_collector_sets_and_logs_the_thresholds(saved_thresholds: tuple[int, int, int]) -> None:
    with capture_logs() as logs:
        before, after = tune_collector()
    assert before == (700, 10, 10) and after == GC_THRESHOLDS == gc.get_threshold()
    assert logs == [{"event": "gc_thresholds", "log_level": "info", "before": [700, 10, 10], "after": list(GC_THRESHOLDS)}]


def test_the_young_generation_is_large_enough_for_a_burst_of_messages() -> None:
    """At least fifty times CPython's 700: a few hundred messages' worth of objects between collections."""
    assert GC_THRESHOLDS[0] >= 50 * 700 and GC_THRESHOLDS[1:] >= (10, 10)
