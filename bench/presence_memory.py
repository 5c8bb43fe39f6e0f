"""`python -m bench.presence_memory [--peers N]`: memory of the presence view per peer.

Builds a PresenceView of N peers (default 100,000) the way an edge does at start-up: by applying the
lifecycle JSON of each peer's last record (edge.kafka.presence.apply_records' path: JSON decoded,
`presence_entry`, `PresenceView.apply`). Peer ids look like real ones (`media-server-<n>`, 19
characters), session ids are UUID4 strings, 8 edges. Prints the tracemalloc growth and the RSS growth
per peer, and how fast records are applied; docs/scaling.md#presence quotes them.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
import tracemalloc
import uuid

from edge.presence import PresenceView, presence_entry


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def records(count: int) -> list[bytes]:
    out = []
    for n in range(count):
        value = {
            "peer_id": f"media-server-{n:06d}",
            "edge_id": f"edge-{n % 8}",
            "timestamp": "2026-03-01T12:00:00.120Z",
            "event_type": "connected" if n % 4 else "disconnected",
            "session_id": str(uuid.uuid4()),
            "epoch": 1_772_366_400_000 + n,
        }
        out.append(json.dumps(value, separators=(",", ":")).encode())
    return out


def build(view: PresenceView, raw: list[bytes]) -> None:
    for at_ms, value in enumerate(raw):
        entry = presence_entry(json.loads(value), 1_772_366_400_000 + at_ms)
        assert entry is not None
        view.apply(*entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100_000)
    args = parser.parse_args()
    raw = records(args.peers)
    gc.collect()
    rss_before = _rss_kib()
    untraced = PresenceView(max_entries=args.peers)
    started = time.perf_counter()
    build(untraced, raw)
    took = time.perf_counter() - started
    gc.collect()
    rss_growth = (_rss_kib() - rss_before) * 1024
    tracemalloc.start()
    view = PresenceView(max_entries=args.peers)
    build(view, raw)
    gc.collect()
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(view) == len(untraced) == args.peers
    print(f"peers: {len(view)}")
    print(f"tracemalloc (the view's own objects): {traced / 1e6:.1f} MB, {traced / args.peers:.0f} bytes/peer")
    print(f"build (decode + apply, no Kafka): {took:.2f} s, {args.peers / took:,.0f} records/s")
    print(f"RSS growth (untraced build): {rss_growth / 2**20:.1f} MiB, {rss_growth / args.peers:.0f} bytes/peer")


if __name__ == "__main__":
    main()
