"""The scenarios of a peer's end and of the edge's: disconnect (a stream reset -> `disconnected` in
Kafka) and shutdown (SIGTERM with peers held -> every `disconnected` flushed, then exit)."""

from __future__ import annotations

import json
import time

import trio

from bench import stats
from bench.report import Figure, at_most
from bench.runner import Bench
from bench.scenarios import Params, Result, connect_peers, edge_settings, raw_kafka


# -------------------------------------------------------------------------------------- disconnect


async def disconnect(b: Bench, p: Params) -> Result:
    edge, topics = await b.start_edge("disconnect", **edge_settings(p, p.disconnect_peers))
    load = await b.start_load("disconnect", edge.port)
    try:
        await connect_peers(load, p, "dis-", p.disconnect_peers)
        start = await b.kafka.wait_count(topics.lifecycle, {}, p.disconnect_peers, timeout=60)  # the connects
        resets = await load.reset(p.disconnect_peers, p.reset_rate)
        end = await b.kafka.wait_count(topics.lifecycle, start, len(resets), timeout=60)
        records = [json.loads(r.value) | {"_append_ms": r.append_ms} for r in await b.kafka.read(topics.lifecycle, start, end)]
    finally:
        await load.stop()
        await edge.stop()
    gone = {r["peer_id"]: r for r in records if r.get("event_type") == "disconnected"}
    latency = stats.summarize([gone[peer]["_append_ms"] - ns / 1e6 for peer, ns in resets.items() if peer in gone])
    reasons: dict[str, int] = {}
    for r in gone.values():
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    produce = await raw_kafka(b, p, "produce", "trio")
    figures = [
        Figure("disconnect: reset -> disconnected in Kafka p50", latency["p50"], "ms", produce["latency_ms"]["p50"]),
        Figure("disconnect: reset -> disconnected in Kafka p99", latency["p99"], "ms", produce["latency_ms"]["p99"],
               "<= 50 ms", at_most(50)(latency["p99"]), note=f"{latency['count']}/{len(resets)} seen, {p.reset_rate:g} resets/s"),
    ]
    return {"figures": figures, "latency_ms": latency, "reasons": reasons, "resets": len(resets), "edge_log_errors": edge.errors}


# ---------------------------------------------------------------------------------------- shutdown


async def shutdown(b: Bench, p: Params) -> Result:
    edge, topics = await b.start_edge("shutdown", **edge_settings(p, p.shutdown_peers))
    load = await b.start_load("shutdown", edge.port)
    try:
        await connect_peers(load, p, "sd-", p.shutdown_peers)
        start = await b.kafka.wait_count(topics.lifecycle, {}, p.shutdown_peers, timeout=60)
        signalled = edge.terminate()
        with trio.move_on_after(60):
            await edge.process.wait()
        exited = time.time_ns()
        streams = await load.wait_ended(timeout=10)
        end = await b.kafka.wait_count(topics.lifecycle, start, p.shutdown_peers, timeout=30)
        records = await b.kafka.read(topics.lifecycle, start, end)
    finally:
        await load.stop()
        await edge.stop()
    flushed = [r for r in records if json.loads(r.value).get("reason") == "shutdown"]
    exit_seconds = (exited - signalled) / 1e9
    last_append = (max(r.append_ms for r in flushed) - signalled / 1e6) / 1000 if flushed else None
    figures = [
        Figure(f"shutdown: SIGTERM -> exit with {p.shutdown_peers} peers", exit_seconds, "s", None, "<= 2 s",
               at_most(2)(exit_seconds) and len(flushed) == p.shutdown_peers),
        Figure("shutdown: disconnected(shutdown) flushed", len(flushed), "events", None, f"= {p.shutdown_peers}",
               len(flushed) == p.shutdown_peers, note=f"last in Kafka {last_append:.3f} s after SIGTERM" if last_append else ""),
    ]
    return {"figures": figures, "exit_code": edge.process.returncode, "streams": streams,
            "last_append_after_sigterm_s": last_append, "edge_log_errors": edge.errors}
