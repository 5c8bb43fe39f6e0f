"""The scenarios: each starts what it needs, measures, and returns its figures and details.

Edge scenarios run a fresh `python -m edge run` each (bench.edgeproc) against the run's broker, with
peers from load-generator processes (bench.loadgen). Raw scenarios measure the bare stack in the
same run on the same cores: purerpc alone (bench.raw_grpc) and aiokafka alone (bench.raw_kafka).
Each raw measurement is made once per run and shared by the edge figures that compare against it.

How each figure is taken (see docs/performance.md for the why):
- throughput: the steady-state rate (middle 80% of the items' times) of Kafka log-append times
  (events) or of peer receive times (commands);
- latency peer -> Kafka: record's LogAppendTime - the send time the load generator stamped into its
  request_id; Kafka -> peer: peer receive time - the command record's LogAppendTime;
- RSS per peer: (edge RSS with N peers - RSS after a warm-up of N/100 peers) / (N - warm-up), after
  holding the peers for `hold_sec` with heartbeats both ways.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from typing import Any

import attrs
import trio

from bench import machine, stats, wire
from bench.report import Figure, at_least, at_most
from bench.runner import Bench, Load

Result = dict[str, Any]

#: Fewest records a step must deliver for its steady-state rate to count as a throughput figure.
MIN_RATE_RECORDS = 1000


@attrs.frozen
class Params:
    capacity_peers: tuple[int, ...] = (1000, 5000, 10000)
    heartbeat_sec: int = 10
    hold_sec: float = 15.0
    connect_concurrency: int = 100
    catalog: int = 10
    event_peers: int = 1000
    event_rates: tuple[float, ...] = (1000, 2000, 5000, 10000, 0)
    step_sec: float = 10.0
    command_peers: int = 1000
    commands: int = 20000
    half_rate_sec: float = 10.0
    disconnect_peers: int = 1000
    reset_rate: float = 200.0
    shutdown_peers: int = 1000
    kafka_records: int = 50000
    latency_rate: float = 1000.0
    soak_sec: float = 1800.0
    soak_warmup_sec: float = 300.0
    soak_peers: int = 500
    soak_event_sec: float = 3.0
    soak_event_rate: float = 1000.0
    #: Rounds after which the soak's peer ids repeat (a fleet of soak_peers x this many peers).
    soak_fleet_rounds: int = 4


#: Validation scale: every scenario end to end in a few minutes (figures not comparable to full scale).
SMALL = Params(
    capacity_peers=(50, 100, 200), heartbeat_sec=5, hold_sec=6, connect_concurrency=50, event_peers=100,
    event_rates=(500, 1000, 0), step_sec=4, command_peers=100, commands=2000, half_rate_sec=4,
    disconnect_peers=100, reset_rate=100, shutdown_peers=200, kafka_records=5000, latency_rate=500,
    soak_sec=120, soak_warmup_sec=30, soak_peers=100, soak_event_sec=2, soak_event_rate=500,
)


#: Admission settings of every edge under test (docs/performance.md, "Admission"): no authentication
#: (its cost is not measured: the load generator's peers present neither client certificates nor
#: tokens), no registration throttle and no connection cap per source address (every load peer comes
#: from 127.0.0.1, so the default 10/s would be the connect rate and the default 256 connections the
#: most peers a step could hold), and a per-peer message rate far above what any step offers
#: (the default 100/s per peer would cap 1,000 peers at 100,000 ev/s and meter every message anyway).
BENCH_ADMISSION: dict[str, Any] = {
    "peer_auth_mode": "none",
    "peer_registration_rate_per_address": 0,
    "peer_message_rate": 1_000_000,
    "peer_message_burst": 1_000_000,
    "grpc_max_connections_per_address": 0,  # every load-generator peer comes from 127.0.0.1
}


def edge_settings(p: Params, peers: int) -> dict[str, Any]:
    return {"max_peers": max(10000, peers), "grpc_max_connections": max(20000, peers + 1000),
            "heartbeat_interval_sec": p.heartbeat_sec,
            "peer_timeout_sec": 4 * p.heartbeat_sec, **BENCH_ADMISSION}


async def connect_peers(load: Load, p: Params, prefix: str, count: int) -> dict[str, Any]:
    result = await load.connect(prefix, count, catalog=p.catalog, concurrency=p.connect_concurrency,
                                heartbeat_sec=p.heartbeat_sec)
    if result["errors"]:
        print(f"  {sum(result['errors'].values())} peers failed to connect: {result['errors']}", file=sys.stderr)
    return result


# ----------------------------------------------------------------------------------------- capacity


async def _capacity_steps(b: Bench, p: Params, load: Load, pid: int) -> list[dict[str, Any]]:
    """Connect peers up to each of `capacity_peers` in turn; hold; RSS per peer and connect rate."""
    warm = max(10, p.capacity_peers[0] // 100)
    await connect_peers(load, p, "cap-", warm)
    await trio.sleep(1)
    base = machine.sample(pid)
    steps = []
    for target in p.capacity_peers:
        connect = await connect_peers(load, p, "cap-", target - load.peers)
        before = machine.sample(pid)
        await trio.sleep(p.hold_sec)
        after = machine.sample(pid)
        load_stats = await load.stats()
        steps.append({
            "peers": target,
            "open": load_stats["open"],
            "connect_rate": connect["rate"],
            "connect_errors": connect["errors"],
            "rss_mib": after.rss_bytes / 2**20,
            "rss_per_peer_kib": (after.rss_bytes - base.rss_bytes) / (target - warm) / 1024,
            "hold_cpu_share": machine.cpu_share(before, after, p.hold_sec),
            "heartbeats_received_by_peers": load_stats["heartbeats_received"],
        })
        print(f"  {target} peers: {steps[-1]}", file=sys.stderr)
    return steps


async def raw_capacity(b: Bench, p: Params) -> list[dict[str, Any]]:
    if "capacity" not in b.raw:
        bare, port = await b.start_bare("raw-capacity", "sink")
        load = await b.start_load("raw-capacity", port)
        try:
            b.raw["capacity"] = await _capacity_steps(b, p, load, bare.pid)
        finally:
            await load.stop()
            await bare.stop()
    return b.raw["capacity"]


async def capacity(b: Bench, p: Params) -> Result:
    top = max(p.capacity_peers)
    edge, topics = await b.start_edge("capacity", **edge_settings(p, top))
    load = await b.start_load("capacity", edge.port)
    try:
        steps = await _capacity_steps(b, p, load, edge.pid)
        start = {}
        ends = await b.kafka.wait_count(topics.lifecycle, start, load.peers, timeout=60)
        in_kafka = sum(ends.values())
    finally:
        await load.stop()
        await edge.stop()
    raw = {s["peers"]: s for s in await raw_capacity(b, p)}
    figures = []
    for s in steps:
        n, r = s["peers"], raw.get(s["peers"], {})
        figures += [
            Figure(f"capacity: peers held of {n}", s["open"], "peers", None, f"= {n}", s["open"] == n),
            Figure(f"capacity: RSS per idle peer @{n}", s["rss_per_peer_kib"], "KiB", r.get("rss_per_peer_kib"),
                   "<= 64 KiB", at_most(64)(s["rss_per_peer_kib"]) if n >= 10000 else None),
            Figure(f"capacity: connect rate @{n}", s["connect_rate"], "peers/s", r.get("connect_rate")),
            Figure(f"capacity: edge CPU holding {n} idle", s["hold_cpu_share"], "core", r.get("hold_cpu_share"),
                   note=f"heartbeat {p.heartbeat_sec} s"),
        ]
    return {"figures": figures, "steps": steps, "raw_steps": list(raw.values()), "connected_in_kafka": in_kafka,
            "edge_log_errors": edge.errors}


# ------------------------------------------------------------------------------------------ raw

async def raw_kafka(b: Bench, p: Params, mode: str, loop: str) -> dict[str, Any]:
    """aiokafka alone (bench.raw_kafka) on the edge cores; consume reads what produce wrote."""
    key = f"kafka_{mode}_{loop}"
    if key not in b.raw:
        if mode == "consume":
            await raw_kafka(b, p, "produce", loop)
        topic = b.raw.setdefault(f"topic_{loop}", f"bench-raw-{loop}-{uuid.uuid4().hex[:6]}")
        if mode == "produce":
            await b.kafka.create_topics([topic])
        command = [sys.executable, "-m", "bench.raw_kafka", mode, loop, b.kafka.bootstrap, topic,
                   "--records", str(p.kafka_records), "--rate", str(p.latency_rate)]
        done = await trio.run_process(command, capture_stdout=True, preexec_fn=lambda: machine.pin(b.cpus.edge))
        b.raw[key] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        print(f"  raw {key}: {b.raw[key]}", file=sys.stderr)
    return b.raw[key]


async def raw_grpc_sink(b: Bench, p: Params) -> dict[str, Any]:
    """purerpc alone, inbound: peers stream file_hash_responses to a handler that only counts them."""
    if "grpc_sink" not in b.raw:
        bare, port = await b.start_bare("raw-sink", "sink")
        load = await b.start_load("raw-sink", port)
        try:
            await connect_peers(load, p, "sink-", p.event_peers)
            result = {}
            for name, rate in (("paced", p.latency_rate), ("max", 0.0)):
                await bare.call("mark")
                sent = await load.send(rate, p.step_sec)
                sunk = await bare.call("sunk", expect=sent["sent"], within=2 * p.step_sec)
                result[name] = {**sunk, "sent": sent["sent"], "load_cpu_share": sent["load_cpu_seconds"] / sent["seconds"]}
            m = result["max"]
            b.raw["grpc_sink"] = {"rate": m["rate"], "cpu_per_msg": m["cpu_seconds"] / max(m["count"], 1),
                                  "latency_ms": result["paced"]["latency_ms"], "steps": result}
        finally:
            await load.stop()
            await bare.stop()
        print(f"  raw grpc_sink: {b.raw['grpc_sink']}", file=sys.stderr)
    return b.raw["grpc_sink"]


async def raw_grpc_source(b: Bench, p: Params) -> dict[str, Any]:
    """purerpc alone, outbound: the server streams stamped file_hash_requests to every peer."""
    if "grpc_source" not in b.raw:
        bare, port = await b.start_bare("raw-source", "source")
        load = await b.start_load("raw-source", port)
        try:
            await connect_peers(load, p, "source-", p.command_peers)
            result = {}
            for name, rate in (("paced", p.latency_rate), ("max", 0.0)):
                await load.commands()
                sourced = await bare.call("source", rate=rate, duration=p.step_sec, timeout=3 * p.step_sec + 30)
                await trio.sleep(1)
                received = await load.commands()
                result[name] = {
                    "sent": sourced["sent"], "received": len(received), "cpu_seconds": sourced["cpu_seconds"],
                    "rate": stats.steady_rate([ns / 1e9 for _, ns in received]),
                    "latency_ms": stats.summarize([(ns - wire.stamp_of(rid)) / 1e6 for rid, ns in received]),
                }
            m = result["max"]
            b.raw["grpc_source"] = {"rate": m["rate"], "cpu_per_msg": m["cpu_seconds"] / max(m["sent"], 1),
                                    "latency_ms": result["paced"]["latency_ms"], "steps": result}
        finally:
            await load.stop()
            await bare.stop()
        print(f"  raw grpc_source: {b.raw['grpc_source']}", file=sys.stderr)
    return b.raw["grpc_source"]


async def raw(b: Bench, p: Params) -> Result:
    """Every raw limit on its own, for the record."""
    sink, source = await raw_grpc_sink(b, p), await raw_grpc_source(b, p)
    figures = [
        Figure("raw: purerpc inbound (sink)", sink["rate"], "msg/s", note=f"{sink['cpu_per_msg'] * 1e6:.0f} us CPU/msg"),
        Figure("raw: purerpc outbound (source)", source["rate"], "msg/s", note=f"{source['cpu_per_msg'] * 1e6:.0f} us CPU/msg"),
    ]
    for mode in ("produce", "consume"):
        for loop in ("asyncio", "trio"):
            k = await raw_kafka(b, p, mode, loop)
            figures.append(Figure(f"raw: aiokafka {mode} ({'trio-asyncio' if loop == 'trio' else loop})", k["rate"],
                                  "rec/s", note=f"{k['cpu_per_record'] * 1e6:.0f} us CPU/rec, "
                                  f"p99 {k['latency_ms']['p99']} ms @{p.latency_rate:g}/s"))
    capacity_steps = await raw_capacity(b, p)
    for s in capacity_steps:
        figures.append(Figure(f"raw: purerpc RSS per idle stream @{s['peers']}", s["rss_per_peer_kib"], "KiB"))
    return {"figures": figures, "raw": b.raw}


# ------------------------------------------------------------------------------------------ events


async def events(b: Bench, p: Params) -> Result:
    edge, topics = await b.start_edge("events", **edge_settings(p, p.event_peers))
    load = await b.start_load("events", edge.port)
    steps = []
    try:
        await connect_peers(load, p, "ev-", p.event_peers)
        for rate in sorted(p.event_rates, key=lambda r: r or math.inf):  # flat out (0) last
            start = await b.kafka.end_offsets(topics.file_hash)
            before, broker_before = machine.sample(edge.pid), _sample_or_none(b.broker_pid)
            sent = await load.send(rate, p.step_sec)
            after, broker_after = machine.sample(edge.pid), _sample_or_none(b.broker_pid)
            # Flat out, the edge holds a backlog (up to a stream window per peer) that could take minutes
            # to drain: its rate is taken from what it appended while the peers were sending and for one
            # step after (saturated throughout, as long as a backlog remains: see "backlog_left").
            flat_out = rate == 0
            end = await b.kafka.wait_count(topics.file_hash, start, sent["sent"],
                                           timeout=p.step_sec if flat_out else 60 + p.step_sec)
            records = await b.kafka.read(topics.file_hash, start, end)
            latencies = [r.append_ms - wire.stamp_of(json.loads(r.value)["request_id"]) / 1e6 for r in records]
            steps.append({
                "offered_rate": rate or "max",
                "sent": sent["sent"],
                "sent_rate": sent["sent"] / sent["seconds"],
                "delivered": len(records),
                "not_delivered_in_time": 0 if flat_out else sent["sent"] - len(records),
                "backlog_left": sent["sent"] - len(records) if flat_out else 0,
                "delivered_rate": stats.steady_rate([r.append_ms / 1000 for r in records]),
                "latency_ms": stats.summarize(latencies),
                "latency_curve_ms": stats.quantile_curve(latencies),
                "edge_cpu_share": machine.cpu_share(before, after, sent["seconds"]),
                "edge_rss_mib": after.rss_bytes / 2**20,
                "edge_peak_rss_mib": after.peak_rss_bytes / 2**20,
                "load_cpu_share": sent["load_cpu_seconds"] / sent["seconds"],
                "broker_cpu_share": machine.cpu_share(broker_before, broker_after, sent["seconds"]) if broker_after else None,
            })
            print(f"  events @{rate or 'max'}: {steps[-1]}", file=sys.stderr)
    finally:
        await load.stop()
        await edge.stop()
    sink, produce = await raw_grpc_sink(b, p), await raw_kafka(b, p, "produce", "trio")
    limit = stats.stack_limit((sink["rate"], sink["cpu_per_msg"]), (produce["rate"], produce["cpu_per_record"]))
    floor_p50 = sink["latency_ms"]["p50"] + produce["latency_ms"]["p50"]
    floor_p99 = sink["latency_ms"]["p99"] + produce["latency_ms"]["p99"]
    # A rate is only a rate over enough records: a step that delivered a handful (the edge stalled) has none.
    best = max((s["delivered_rate"] for s in steps
                if not math.isnan(s["delivered_rate"]) and s["delivered"] >= MIN_RATE_RECORDS), default=math.nan)
    late = sum(s["not_delivered_in_time"] for s in steps)
    figures = [Figure("events: throughput to Kafka (max)", best, "ev/s", limit, ">= 0.7 x raw",
                      at_least(0.7)(stats.ratio(best, limit)), note=f"{late} paced events not in Kafka in time")]
    for s in steps:
        if s["offered_rate"] != "max":
            figures += [
                Figure(f"events: latency p50 @{s['offered_rate']:g}/s", s["latency_ms"]["p50"], "ms", floor_p50),
                Figure(f"events: latency p99 @{s['offered_rate']:g}/s", s["latency_ms"]["p99"], "ms", floor_p99,
                       note=f"edge CPU {s['edge_cpu_share']:.2f}"),
            ]
    return {"figures": figures, "steps": steps, "stack_limit": limit, "edge_log_errors": edge.errors}


def _sample_or_none(pid: int | None) -> machine.ProcSample | None:
    return machine.sample(pid) if pid else None


# ---------------------------------------------------------------------------------------- commands


def command_record(peer_id: str, request_id: str) -> tuple[str, bytes]:
    value = {"peer_id": peer_id, "command_type": "file_hash", "request_id": request_id,
             "command_data": {"catalog_uuid": f"6f1c2a1e-8d1b-4a53-9a55-{request_id[-12:]:>012}", "hash_types": ["sha256"]}}
    return peer_id, json.dumps(value, separators=(",", ":")).encode()


async def wait_commands(load: Load, count: int, timeout: float) -> int:
    """Wait until the peers hold `count` received commands, or until `timeout`; how many they hold."""
    with trio.move_on_after(timeout):
        while (got := (await load.stats())["commands"]) < count:
            await trio.sleep(0.25)
        return got
    return (await load.stats())["commands"]


async def commands(b: Bench, p: Params) -> Result:
    edge, topics = await b.start_edge("commands", **edge_settings(p, p.command_peers))
    load = await b.start_load("commands", edge.port)
    details: dict[str, Any] = {}
    try:
        await connect_peers(load, p, "cmd-", p.command_peers)
        peers = load.peer_ids()
        # A first command per peer: does this edge deliver commands at all?
        await b.kafka.produce(topics.commands, [command_record(peer, f"probe-{i}-0") for i, peer in enumerate(peers)], 0)
        details["probe_delivered"] = await wait_commands(load, len(peers), timeout=30)
        await load.commands()
        if details["probe_delivered"] == 0:
            return {"figures": [Figure("commands: throughput to peers (max)", None, "cmd/s",
                                       note="no command reached a peer in 30 s: no command consumer in this edge?")],
                    **details}
        # Max: a backlog produced as fast as the producer goes; the edge drains it at its own pace.
        backlog = [command_record(peers[i % len(peers)], f"max-{i}-0") for i in range(p.commands)]
        details["backlog_produce"] = await b.kafka.produce(topics.commands, backlog, 0)
        await wait_commands(load, p.commands, timeout=60 + p.commands / 200)
        received = await load.commands()
        best = stats.steady_rate([ns / 1e9 for _, ns in received])
        details["max"] = {"received": len(received), "rate": best}
        # Half the maximum rate, paced: latency from the command's log-append time to the peer.
        half = best / 2
        count = max(1, int(half * p.half_rate_sec))
        start = await b.kafka.end_offsets(topics.commands)
        paced = [command_record(peers[i % len(peers)], f"half-{i}-0") for i in range(count)]
        await b.kafka.produce(topics.commands, paced, half)
        await wait_commands(load, count, timeout=60)
        received = await load.commands()
        appended = {json.loads(r.value)["request_id"]: r.append_ms
                    for r in await b.kafka.read(topics.commands, start, await b.kafka.end_offsets(topics.commands))}
        latencies = [ns / 1e6 - appended[rid] for rid, ns in received if rid in appended]
        latency = stats.summarize(latencies)
        details["half"] = {"rate": half, "produced": count, "received": len(received), "latency_ms": latency,
                           "latency_curve_ms": stats.quantile_curve(latencies)}
        details["dead_letters"] = sum((await b.kafka.end_offsets(topics.deadletter)).values())
    finally:
        await load.stop()
        await edge.stop()
    source, consume = await raw_grpc_source(b, p), await raw_kafka(b, p, "consume", "trio")
    limit = stats.stack_limit((source["rate"], source["cpu_per_msg"]), (consume["rate"], consume["cpu_per_record"]))
    floor_p99 = source["latency_ms"]["p99"] + consume["latency_ms"]["p99"]
    figures = [
        Figure("commands: throughput to peers (max)", best, "cmd/s", limit, ">= 0.7 x raw",
               at_least(0.7)(stats.ratio(best, limit)), note=f"dead letters {details['dead_letters']}"),
        Figure(f"commands: latency p50 @{half:.0f}/s (half max)", latency["p50"], "ms",
               source["latency_ms"]["p50"] + consume["latency_ms"]["p50"]),
        Figure(f"commands: latency p99 @{half:.0f}/s (half max)", latency["p99"], "ms", floor_p99, "<= 25 ms",
               at_most(25)(latency["p99"])),
    ]
    return {"figures": figures, **details, "stack_limit": limit, "edge_log_errors": edge.errors}


SCENARIOS = {
    "raw": raw,
    "capacity": capacity,
    "events": events,
    "commands": commands,
}
