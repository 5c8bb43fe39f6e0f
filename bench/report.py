"""Figures: one row each, with its raw limit, the grpc.aio stack's value, the ratios and the issue's target;
a table and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from bench.stats import ratio


@attrs.frozen
class Figure:
    """One measured figure of the edge. `raw` is the same figure for the bare stack in the same run
    (None where the stack has none); `aio` the same figure for the grpc.aio + aiokafka stack
    (bench.aio_edge) in the same run; `target` is the issue's bound, checked by `met`."""

    name: str
    value: float | None
    unit: str
    raw: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    aio: float | None = None

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.raw)

    @property
    def aio_ratio(self) -> float | None:
        return ratio(self.value, self.aio)

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "ratio": self.ratio, "aio_ratio": self.aio_ratio}


def at_most(limit: float):
    return lambda value: None if value is None or math.isnan(value) else value <= limit


def at_least(limit: float):
    return lambda value: None if value is None or math.isnan(value) else value >= limit


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(figures: Sequence[Figure]) -> str:
    """A plain-text table: figure, edge value, raw limit, edge / raw, grpc.aio, edge / grpc.aio, target, met."""
    rows = [("figure", "edge", "raw stack", "edge/raw", "grpc.aio", "edge/aio", "target", "met", "note")]
    for f in figures:
        met = {True: "yes", False: "NO", None: ""}[f.met]
        rows.append((f.name, f"{_number(f.value)} {f.unit}", _number(f.raw), _number(f.ratio), _number(f.aio),
                     _number(f.aio_ratio), f.target, met, f.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, default=_default) + "\n")


def _default(value: object) -> object:
    if isinstance(value, Figure):
        return value.to_json()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(type(value).__name__)
