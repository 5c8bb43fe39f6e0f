"""The process's garbage collector: its thresholds, set once at start-up, and what it does during the
drain and at exit (`python -m edge run`, not an embedding program, whose collector is its own to tune).

CPython's default thresholds (700, 10, 10) collect the youngest generation every 700 net container
allocations and promote whatever survives. An edge holding thousands of peers keeps a large, slowly
growing heap of long-lived objects (sessions, h2 state, TLS objects), so survivors pile into the older
generations and full collections walk all of it. Measured with `python -m bench capacity --peers 2000`
(10 s heartbeats, TLS): with the defaults the collector ran 1,116 / 102 / 9 times per generation and
took 9.1 s of the run's CPU (the full collections 0.57 s each, a stall of every peer while they run);
with GC_THRESHOLDS it ran 12 / 1 / 0 times and took 0.87 s (docs/design.md#collector-thresholds).

A larger young generation lets short-lived objects (a message, its protobuf, its h2 events) die of
reference counting before a collection ever sees them; cyclic garbage is still collected, later and in
fewer, larger passes. `gc.freeze` is not used while the edge runs: objects that become garbage after
it would never be collected.

The drain (docs/operations.md#shutdown-and-drain) is another matter. From the first signal the
collector is off (`collector_off_for_drain`): a full collection scans every session's objects (about
400 per peer) and, while the sessions are still ending, frees none of them, and the drain is bounded
(SHUTDOWN_DEADLINE_SEC). Once the edge has stopped, the heap is frozen and the collector back on
(`heap_frozen_for_exit`), so the interpreter's exit, which collects regardless of thresholds, does not
walk the ended sessions' cycles (about 365,000 objects at 1,000 peers: 0.9 to 1.9 s on the test machine)
just before the process's memory is returned whole (docs/performance.md, "Shutdown").
"""

from __future__ import annotations

import gc
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: (youngest generation, middle, oldest): see the module docstring.
GC_THRESHOLDS: Final = (50_000, 20, 10)


def tune_collector() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Set GC_THRESHOLDS; log and return (before, after)."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    after = gc.get_threshold()
    log.info("gc_thresholds", before=list(before), after=list(after))
    return before, after


def collector_off_for_drain() -> None:
    """The drain starts: no collections until `heap_frozen_for_exit` (module docstring)."""
    gc.disable()


def heap_frozen_for_exit() -> None:
    """The edge has stopped: freeze what is left, so the exit does not collect it; collector back on."""
    gc.freeze()
    gc.enable()
