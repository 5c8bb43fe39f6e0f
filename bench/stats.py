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


def quantile_curve(values: Sequence[float], points: int = 100) -> list[tuple[float, float]]:
    """A distribution kept small enough for the JSON: (q, value at the q-th percentile) for `points` + 1
    evenly spaced q from 0 (the minimum) to 100 (the maximum); its plot is the CDF. Empty when no values."""
    ordered = sorted(values)
    if not ordered:
        return []
    curve = [(0.0, float(ordered[0]))]
    curve += [(round(100 * i / points, 3), round(percentile(ordered, 100 * i / points), 3)) for i in range(1, points + 1)]
    return curve


def soak_summary(rounds: Sequence[dict[str, float]], warmup_sec: float, baseline_fds: int) -> dict[str, float | int]:
    """RSS growth and open files over the rounds of a churn soak that ended after `warmup_sec`.

    Each round is {"t": seconds since the start, "rss_bytes": ..., "fds": ...}, sampled once the round's
    peers had left. Growth compares the median RSS of the last quarter of the measured rounds with the
    median of their first quarter (medians, so one round's garbage-collection timing moves nothing);
    the trend is the least-squares slope of RSS over time, per hour, as % of the first quarter's median.
    `fds_above_baseline` counts measured rounds whose open files did not come back to `baseline_fds`.
    """
    measured = [r for r in rounds if r["t"] >= warmup_sec]
    n = len(measured)
    if n < 2:
        return {"rounds": len(rounds), "measured_rounds": n, "rss_growth_pct": math.nan, "rss_trend_pct_per_hour": math.nan,
                "fds_above_baseline": sum(1 for r in measured if r["fds"] > baseline_fds), "max_fds_excess": 0}
    quarter = max(1, n // 4)
    first = percentile(sorted(r["rss_bytes"] for r in measured[:quarter]), 50)
    last = percentile(sorted(r["rss_bytes"] for r in measured[-quarter:]), 50)
    ts = [r["t"] for r in measured]
    mean_t, mean_rss = sum(ts) / n, sum(r["rss_bytes"] for r in measured) / n
    var_t = sum((t - mean_t) ** 2 for t in ts)
    slope = sum((r["t"] - mean_t) * (r["rss_bytes"] - mean_rss) for r in measured) / var_t if var_t else 0.0
    return {
        "rounds": len(rounds),
        "measured_rounds": n,
        "rss_first_mib": round(first / 2**20, 2),
        "rss_last_mib": round(last / 2**20, 2),
        "rss_min_mib": round(min(r["rss_bytes"] for r in measured) / 2**20, 2),
        "rss_max_mib": round(max(r["rss_bytes"] for r in measured) / 2**20, 2),
        "rss_growth_pct": round(100 * (last - first) / first, 3),
        "rss_trend_pct_per_hour": round(100 * slope * 3600 / first, 3),
        "fds_above_baseline": sum(1 for r in measured if r["fds"] > baseline_fds),
        "max_fds_excess": max(0, max(int(r["fds"]) - baseline_fds for r in measured)),
    }
