"""The churn soak: rounds of peers connecting, publishing, receiving commands and leaving, for a while.

Each round: `soak_peers` peers connect and register (a `connected` each), send file_hash_responses at
`soak_event_rate` for `soak_event_sec`, get one command each from the command topic, then all close
their connections. Once they have left (the edge's open files back at the baseline, or 5 s), the
edge's RSS and open files are sampled. The baseline is the edge's open files once the first round's
peers have left (its Kafka connections are all open by then); the count before any peer is kept too. Rounds repeat until `soak_sec` have
passed; the figures (bench.stats.soak_summary) count only rounds that ended after `soak_warmup_sec`.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from bench import machine, stats
from bench.report import Figure, at_most
from bench.runner import Bench
from bench.scenarios import Params, Result, command_record, connect_peers, edge_settings, wait_commands

#: Longest a round waits for the edge's open files to come back to the baseline after its peers left.
SETTLE_SEC = 5.0


async def _settle(pid: int, baseline: int) -> tuple[int, float]:
    """Wait until `pid` holds no more files than `baseline` (or SETTLE_SEC); its count and the wait."""
    began = trio.current_time()
    with trio.move_on_after(SETTLE_SEC):
        while machine.open_fds(pid) > baseline:
            await trio.sleep(0.05)
    return machine.open_fds(pid), trio.current_time() - began


async def soak(b: Bench, p: Params) -> Result:
    edge, topics = await b.start_edge("soak", **edge_settings(p, p.soak_peers))
    load = await b.start_load("soak", edge.port)
    rounds: list[dict[str, Any]] = []
    try:
        await trio.sleep(1)
        baseline = before_peers = machine.open_fds(edge.pid)
        began = trio.current_time()
        while trio.current_time() - began < p.soak_sec:
            index = len(rounds)
            # The same fleet comes back: ids repeat every `soak_fleet_rounds` rounds, as home servers
            # reconnect with their own ids (new ids every round would grow the presence view, ~370 bytes
            # per peer ever seen, docs/scaling.md, and hide a leak in it).
            connect = await connect_peers(load, p, f"soak{index % p.soak_fleet_rounds}-", p.soak_peers)
            sent = await load.send(p.soak_event_rate, p.soak_event_sec)
            await b.kafka.produce(topics.commands, [command_record(peer, f"soak{index}-{i}-0")
                                                    for i, peer in enumerate(load.peer_ids())], 0)
            await wait_commands(load, p.soak_peers, timeout=30)
            received = len(await load.commands())
            held = machine.open_fds(edge.pid)
            reasons = await load.leave()
            fds, settle = await _settle(edge.pid, baseline)
            if index == 0:
                baseline = fds
            sample = machine.sample(edge.pid)
            rounds.append({
                "round": index, "t": round(trio.current_time() - began, 2), "connected": connect["connected"],
                "connect_errors": sum(connect["errors"].values()), "events_sent": sent["sent"],
                "commands_received": received, "fds_while_held": held, "fds": fds, "settle_sec": round(settle, 3),
                "rss_bytes": sample.rss_bytes, "cpu_seconds": sample.cpu_seconds, "ends": reasons,
            })
            print(f"  soak round {index}: t {rounds[-1]['t']:.0f} s, RSS {sample.rss_bytes / 2**20:.1f} MiB, "
                  f"fds {fds} (baseline {baseline}, {held} held), {received}/{p.soak_peers} commands", file=sys.stderr)
    finally:
        await load.stop()
        await edge.stop()
    summary = stats.soak_summary(rounds, p.soak_warmup_sec, baseline)
    commands, expected = sum(r["commands_received"] for r in rounds), len(rounds) * p.soak_peers
    note = (f"{summary['measured_rounds']} of {summary['rounds']} rounds after {p.soak_warmup_sec:g} s warm-up, "
            f"{p.soak_peers} peers/round")
    figures = [
        Figure("soak: RSS growth after warm-up", summary["rss_growth_pct"], "%", None, "<= 1 %",
               at_most(1)(summary["rss_growth_pct"]), note=note),
        Figure("soak: RSS after warm-up (last quarter)", summary.get("rss_last_mib"), "MiB",
               note=f"trend {summary['rss_trend_pct_per_hour']} %/h"),
        Figure("soak: rounds with fds above baseline", summary["fds_above_baseline"], "rounds", None, "= 0",
               summary["fds_above_baseline"] == 0, note=f"baseline {baseline} fds, worst +{summary['max_fds_excess']}"),
        Figure("soak: rounds completed", len(rounds), "rounds", note=f"{p.soak_sec:g} s of churn"),
        Figure("soak: commands delivered, of sent", commands / expected if expected else None, "", None, "= 1",
               commands == expected, note=f"{commands} of {expected}"),
    ]
    return {"figures": figures, "baseline_fds": baseline, "fds_before_peers": before_peers, "summary": summary, "rounds": rounds,
            "edge_log_errors": edge.errors}
