"""Plots of a run, written as PNG files next to its results.json (matplotlib, from the [bench] extra).

- latency-events.png: the CDF of event latency (peer -> Kafka) at each paced rate, edge and grpc.aio;
- latency-commands.png: the CDF of command latency (Kafka -> peer) at half each stack's maximum rate;
- capacity.png: edge RSS and CPU against peers held, edge, grpc.aio and bare purerpc;
- soak.png: RSS and open files over the soak's rounds, edge and grpc.aio, warm-up marked.
Each is drawn from the figures in the results (quantile curves, steps, rounds); a scenario that did
not run (or failed) leaves its plot out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Line style of each stack in every plot.
STYLES = {"edge": {"color": "tab:blue"}, "grpc.aio": {"color": "tab:orange", "linestyle": "--"},
          "bare purerpc": {"color": "tab:green", "linestyle": ":"}}


def _stacks(result: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(label, result) of the edge's run and, if it ran and did not fail, the grpc.aio stack's."""
    if not result or "error" in result:
        return []
    stacks = [("edge", result)]
    other = result.get("grpcaio")
    if other and "error" not in other:
        stacks.append(("grpc.aio", other))
    return stacks


def write_plots(results: dict[str, dict[str, Any]], out: Path, warmup_sec: float) -> list[Path]:
    """Draw every plot the results allow into `out`; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(figure: Any, name: str) -> None:
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        written.append(out / name)

    events = _stacks(results.get("events"))
    if events:
        figure, axes = plt.subplots(figsize=(8, 5))
        for label, result in events:
            paced = [step for step in result.get("steps", []) if step["offered_rate"] != "max" and step.get("latency_curve_ms")]
            for index, step in enumerate(paced):  # higher rates drawn darker and thicker
                curve = step["latency_curve_ms"]
                shade = (index + 1) / len(paced)
                axes.plot([v for _, v in curve], [q for q, _ in curve], label=f"{label} @{step['offered_rate']:g}/s",
                          alpha=0.35 + 0.65 * shade, linewidth=0.8 + 1.4 * shade, **STYLES[label])
        _cdf_axes(axes, "events: peer -> Kafka latency (CDF)")
        save(figure, "latency-events.png")

    commands = [(label, r["half"]) for label, r in _stacks(results.get("commands")) if "half" in r]
    if commands:
        figure, axes = plt.subplots(figsize=(8, 5))
        for label, half in commands:
            curve = half.get("latency_curve_ms") or []
            axes.plot([v for _, v in curve], [q for q, _ in curve], label=f"{label} @{half['rate']:.0f}/s (half max)",
                      **STYLES[label])
        _cdf_axes(axes, "commands: Kafka -> peer latency at half max rate (CDF)")
        save(figure, "latency-commands.png")

    capacity = _stacks(results.get("capacity"))
    if capacity:
        figure, (rss, cpu) = plt.subplots(1, 2, figsize=(11, 4.5))
        lines = [(label, r.get("steps", [])) for label, r in capacity] + [("bare purerpc", capacity[0][1].get("raw_steps", []))]
        for label, steps in lines:
            if steps:
                peers = [s["peers"] for s in steps]
                rss.plot(peers, [s["rss_mib"] for s in steps], marker="o", label=label, **STYLES[label])
                cpu.plot(peers, [s["hold_cpu_share"] for s in steps], marker="o", label=label, **STYLES[label])
        rss.set(xlabel="peers held", ylabel="RSS (MiB)", title="capacity: RSS")
        cpu.set(xlabel="peers held", ylabel="CPU (cores), holding idle peers", title="capacity: CPU")
        for axes in (rss, cpu):
            axes.grid(alpha=0.3)
            axes.legend()
        save(figure, "capacity.png")

    soak = _stacks(results.get("soak"))
    if soak:
        figure, (rss, fds) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
        for label, result in soak:
            rounds = result.get("rounds", [])
            ts = [r["t"] / 60 for r in rounds]
            rss.plot(ts, [r["rss_bytes"] / 2**20 for r in rounds], marker=".", label=label, **STYLES[label])
            fds.plot(ts, [r["fds"] for r in rounds], marker=".", label=f"{label} after the round", **STYLES[label])
            fds.axhline(result.get("baseline_fds", 0), linewidth=0.8, **STYLES[label])
        for axes in (rss, fds):
            axes.axvline(warmup_sec / 60, color="grey", linewidth=0.8)
            axes.grid(alpha=0.3)
            axes.legend()
        rss.set(ylabel="RSS (MiB)", title="soak: after each round of churn (warm-up: grey line)")
        fds.set(xlabel="minutes", ylabel="open files (baseline: thin line)")
        save(figure, "soak.png")
    return written


def _cdf_axes(axes: Any, title: str) -> None:
    axes.set_xscale("log")
    axes.set(xlabel="latency (ms, log)", ylabel="percentile", title=title, ylim=(0, 100))
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
