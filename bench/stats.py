"""Pure figures from raw samples: percentiles, steady-state rates, the composed stack limit.

No I/O here: every process of the bench (orchestrator, load generators, bare servers) reduces its
samples with these functions, and tests/test_bench.py checks them without a loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Share of samples dropped at each end of a run when measuring a steady-state rate (ramp-up and
#: drain are not the steady state).
TRIM: float = 0.1


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank. NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p99, max of `values` (milliseconds by convention)."""
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50), 3),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3) if ordered else math.nan,
    }


def steady_rate(times: Sequence[float], trim: float = TRIM) -> float:
    """Events per second between the `trim` and `1 - trim` quantiles of their times (seconds).

    With fewer than 10 events, or all at one instant, it falls back to count / span (or NaN).
    """
    ordered = sorted(times)
    n = len(ordered)
    if n < 2:
        return math.nan
    lo, hi = (int(n * trim), int(n * (1 - trim)) - 1) if n >= 10 else (0, n - 1)
    span = ordered[hi] - ordered[lo]
    return (hi - lo) / span if span > 0 else math.nan


def stack_limit(*parts: tuple[float, float]) -> float:
    """The best rate one core could reach doing every part's work for each item, with no glue.

    Each part is (rate, cpu_seconds_per_item) measured alone on the same core: the composed limit is
    bounded by each part's own rate (a part may be held back by something else, e.g. the broker)
    and by the sum of their CPU costs.
    """
    rates = [rate for rate, _ in parts if rate > 0]
    cost = sum(cpu for _, cpu in parts if cpu > 0)
    candidates = rates + ([1 / cost] if cost > 0 else [])
    return min(candidates) if candidates else math.nan


def ratio(measured: float | None, limit: float | None) -> float | None:
    """measured / limit, or None when either is missing."""
    if measured is None or limit is None or not limit or math.isnan(limit) or math.isnan(measured):
        return None
    return measured / limit
