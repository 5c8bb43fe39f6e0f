"""peer-sim's counters and reports: `SimStats` per process, snapshots merged across processes, the
progress line and the JSON summary. Pure: no I/O, no clock (times are passed in)."""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any, Final

import attrs

#: Histogram buckets (ms) for registration latency: merged across processes, read as percentiles.
LATENCY_BUCKETS_MS: Final = tuple(round(0.1 * 1.25**i, 3) for i in range(60))  # 0.1 ms .. ~65 s


@attrs.define
class SimStats:
    """Counters of one simulation; `snapshot()` is JSON-ready and `merge()` adds snapshots up."""

    peers: int = 0
    registered_now: int = 0
    max_registered: int = 0
    registrations: int = 0
    peers_ever_registered: set[str] = attrs.field(factory=set)
    registration_failures: int = 0
    connect_failures: int = 0
    heartbeats_sent: int = 0
    heartbeats_received: int = 0
    commands_received: collections.Counter[str] = attrs.field(factory=collections.Counter)
    responses_sent: int = 0
    offers_sent: int = 0
    offers_accepted: int = 0
    stream_endings: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Connections made, by edge address "host:port".
    connections: collections.Counter[str] = attrs.field(factory=collections.Counter)
    latency_buckets: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_max_ms: float = 0.0
    started_at: float = 0.0
    all_registered_after: float | None = None

    def registered(self, peer_id: str, latency_ms: float, now: float) -> None:
        self.registrations += 1
        self.peers_ever_registered.add(peer_id)
        self.registered_now += 1
        self.max_registered = max(self.max_registered, self.registered_now)
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS_MS) if latency_ms <= bound), len(LATENCY_BUCKETS_MS))
        self.latency_buckets[index] += 1
        self.latency_max_ms = max(self.latency_max_ms, latency_ms)
        if self.all_registered_after is None and len(self.peers_ever_registered) == self.peers:
            self.all_registered_after = now - self.started_at

    def snapshot(self) -> dict[str, Any]:
        return {
            "peers": self.peers,
            "registered_now": self.registered_now,
            "max_registered": self.max_registered,
            "peers_ever_registered": len(self.peers_ever_registered),
            "registrations": self.registrations,
            "registration_failures": self.registration_failures,
            "connect_failures": self.connect_failures,
            "heartbeats_sent": self.heartbeats_sent,
            "heartbeats_received": self.heartbeats_received,
            "commands_received": dict(self.commands_received),
            "responses_sent": self.responses_sent,
            "offers_sent": self.offers_sent,
            "offers_accepted": self.offers_accepted,
            "stream_endings": dict(self.stream_endings),
            "connections": dict(self.connections),
            "latency_buckets": list(self.latency_buckets),
            "latency_max_ms": round(self.latency_max_ms, 3),
            "all_registered_after_sec": None if self.all_registered_after is None else round(self.all_registered_after, 3),
        }


def merge_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add up the snapshots of several processes: counts are summed (`max_registered` too: the sum of
    each process's peak), the latency maximum and the time to all-registered are the slowest one's."""
    merged: dict[str, Any] = {}
    for snap in snapshots:
        for key, value in snap.items():
            if key == "latency_max_ms":
                merged[key] = max(merged.get(key, 0), value)
            elif key == "all_registered_after_sec":
                if key not in merged:
                    merged[key] = value
                elif value is None or merged[key] is None:
                    merged[key] = None
                else:
                    merged[key] = max(merged[key], value)
            elif isinstance(value, dict):
                target = merged.setdefault(key, {})
                for k, v in value.items():
                    target[k] = target.get(k, 0) + v
            elif isinstance(value, list):
                target = merged.setdefault(key, [0] * len(value))
                merged[key] = [a + b for a, b in zip(target, value, strict=False)]
            else:
                merged[key] = merged.get(key, 0) + value
    if len(snapshots) != 1 and any(s.get("all_registered_after_sec") is None for s in snapshots):
        merged["all_registered_after_sec"] = None
    return merged


def latency_percentiles(buckets: Sequence[int], max_ms: float) -> dict[str, float | None]:
    """p50/p90/p99 (bucket upper bounds, in ms) and the exact maximum."""
    total = sum(buckets)
    result: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        if total == 0:
            result[name] = None
            continue
        rank = math.ceil(q * total)
        seen = 0
        for index, count in enumerate(buckets):
            seen += count
            if seen >= rank:
                bound = LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else max_ms
                result[name] = min(bound, max_ms)
                break
    result["max"] = max_ms if total else None
    return result


def summary(snapshot: dict[str, Any], target: str, tls: bool, elapsed: float, processes: int) -> dict[str, Any]:
    out = {key: value for key, value in snapshot.items() if key not in ("latency_buckets", "latency_max_ms")}
    out = {
        "event": "peer_sim_summary",
        "target": target,
        "tls": tls,
        "processes": processes,
        "elapsed_sec": round(elapsed, 3),
        **out,
        "registration_latency_ms": latency_percentiles(snapshot["latency_buckets"], snapshot["latency_max_ms"]),
    }
    return out


def progress_line(snapshot: dict[str, Any], elapsed: float) -> str:
    commands = sum(snapshot["commands_received"].values())
    endings = ", ".join(f"{k} {v}" for k, v in sorted(snapshot["stream_endings"].items())) or "none"
    return (
        f"peer-sim {elapsed:7.1f}s  registered {snapshot['registered_now']}/{snapshot['peers']}"
        f"  commands {commands} answered {snapshot['responses_sent']}"
        f"  heartbeats out {snapshot['heartbeats_sent']} in {snapshot['heartbeats_received']}"
        f"  ended: {endings}  connect failures {snapshot['connect_failures']}"
    )
