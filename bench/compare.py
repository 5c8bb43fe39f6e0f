"""Each scenario run twice in one run, against the edge and against the stack a user would pick instead
(bench.aio_edge: grpc.aio + aiokafka), its figures merged into one row each: edge, raw, grpc.aio."""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from bench.report import Figure
from bench.runner import Bench
from bench.scenarios import Params

Result = dict[str, Any]
Scenario = Callable[[Bench, Params], Awaitable[Result]]

_NUMBER_AFTER_AT = re.compile(r"@[\d.,]+")


def _loose(name: str) -> str:
    """A figure's name without the measured number after '@' ("latency p99 @2510/s (half max)" names the
    rate each stack reached, which differs between them)."""
    return _NUMBER_AFTER_AT.sub("@", name)


def merge(edge: Sequence[Figure], aio: Sequence[Figure]) -> list[Figure]:
    """The edge's figures, each with `aio` set to the grpc.aio stack's value of the same figure: same name,
    or else the one figure whose name differs only in the number after '@'. Unmatched: `aio` stays None."""
    exact = {f.name: f.value for f in aio}
    loose: dict[str, list[float | None]] = {}
    for f in aio:
        loose.setdefault(_loose(f.name), []).append(f.value)
    merged = []
    for f in edge:
        if f.name in exact:
            value = exact[f.name]
        else:
            candidates = loose.get(_loose(f.name), [])
            value = candidates[0] if len(candidates) == 1 else None
        merged.append(attrs.evolve(f, aio=value))
    return merged


async def compared(scenario: Scenario, b: Bench, p: Params, *, with_aio: bool = True) -> Result:
    """The edge's result of `scenario`, then the grpc.aio stack's, merged; the latter kept under "grpcaio"."""
    result = await scenario(b, p)
    if not with_aio:
        return result
    print("  -- the same against grpc.aio + aiokafka (bench.aio_edge)", file=sys.stderr)
    b.implementation = "grpcaio"
    try:
        other = await scenario(b, p)
    except Exception as error:  # noqa: BLE001 - the edge's figures stand without the comparison
        other = {"error": f"{type(error).__name__}: {error}", "figures": []}
        print(f"  grpc.aio run failed: {error!r}", file=sys.stderr)
    finally:
        b.implementation = "edge"
    result["figures"] = merge(result["figures"], other["figures"])
    result["grpcaio"] = other
    return result
