"""The `abuse` scenario: each attack of issue 11's table (bench.attackers) for a bounded time, beside 20
good peers, against one edge with its default limits.

Per vector, while the attack runs: a fresh good peer registers every 0.5 s from 127.0.0.1 (attackers
come from 127.0.0.2 and up) and its registration time is kept; the 20 good peers send paced events
whose latency is taken from Kafka (LogAppendTime - the stamp in the request id); /healthz is probed
every 0.2 s (1 s timeout); the edge's RSS is sampled every 0.5 s. After it: `after_sec` of quiet, then
RSS again, and the edge's `connections_refused_total` by cause from /metrics.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import attrs
import trio

from bench import machine, stats, wire
from bench.attackers import VECTORS
from bench.report import Figure, at_least, at_most
from bench.runner import Bench

GOOD_PEERS = 20
EVENTS_PER_SEC = 100.0


@attrs.frozen
class AbuseParams:
    vector_sec: float = 20.0
    after_sec: float = 60.0
    vectors: tuple[str, ...] = tuple(VECTORS)


async def _get(port: int, path: str, timeout: float = 1.0) -> bytes | None:
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
                return data
        except OSError:
            return None
    return None


def _refusals(metrics: bytes | None) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in (metrics or b"").decode(errors="replace").splitlines():
        if line.startswith("giggityflix_edge_connections_refused_total{"):
            cause = line.split('cause="', 1)[1].split('"', 1)[0]
            found[cause] = float(line.rsplit(" ", 1)[1])
    return found


class Probes:
    """What the good side sees during one vector."""

    def __init__(self, edge_port: int, http_port: int, ssl_context: Any, pid: int) -> None:
        self.edge_port, self.http_port, self.ssl_context, self.pid = edge_port, http_port, ssl_context, pid
        self.registrations_ms: list[float] = []
        self.registration_failures = 0
        self.health = [0, 0]
        self.rss: list[int] = []
        self._next_id = 0

    async def register_now_and_then(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                self._next_id += 1
                nursery.start_soon(self._register_one, f"probe-{self._next_id}")
                await trio.sleep(0.5)

    async def _register_one(self, peer_id: str) -> None:
        peer = wire.Peer(peer_id, lambda *_: None)
        began = time.monotonic()
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(10):
                    await nursery.start(peer.run, "127.0.0.1", self.edge_port, self.ssl_context, wire.registration(peer_id, 10))
                self.registrations_ms.append((time.monotonic() - began) * 1000)
                await peer.close()
                nursery.cancel_scope.cancel()
        except (Exception, trio.TooSlowError):  # noqa: BLE001 - a failed registration is a figure
            self.registration_failures += 1

    async def probe_health(self) -> None:
        while True:
            reply = await _get(self.http_port, "/healthz")
            self.health[0] += bool(reply and reply.startswith(b"HTTP/1.1 200"))
            self.health[1] += 1
            await trio.sleep(0.2)

    async def sample_rss(self) -> None:
        while True:
            self.rss.append(machine.sample(self.pid).rss_bytes)
            await trio.sleep(0.5)


async def _send_events(peers: list[wire.Peer], duration: float) -> int:
    sent = 0
    interval = len(peers) / EVENTS_PER_SEC
    stop_at = trio.current_time() + duration

    async def one(index: int, peer: wire.Peer) -> None:
        nonlocal sent
        messages = wire.HashResponses(index)
        at = trio.current_time() + interval * index / len(peers)
        while at < stop_at and not peer.ended.is_set():
            await trio.sleep_until(at)
            try:
                await peer.send([messages.next()])
            except trio.BrokenResourceError:
                return
            sent += 1
            at += interval

    async with trio.open_nursery() as nursery:
        for index, peer in enumerate(peers):
            nursery.start_soon(one, index, peer)
    return sent


async def _vector(b: Bench, edge: Any, topics: Any, peers: list[wire.Peer], vector: str, ap: AbuseParams,
                  ssl_context: Any) -> dict[str, Any]:
    http_port = int(edge.events["edge_started"]["http_port"])
    baseline = machine.sample(edge.pid).rss_bytes
    refused_before = _refusals(await _get(http_port, "/metrics", 5))
    start = await b.kafka.end_offsets(topics.file_hash)
    probes = Probes(edge.port, http_port, ssl_context, edge.pid)
    attacker: dict[str, Any] = {}
    sent = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probes.register_now_and_then)
        nursery.start_soon(probes.probe_health)
        nursery.start_soon(probes.sample_rss)

        async def events() -> None:
            nonlocal sent
            sent = await _send_events([p for p in peers if not p.ended.is_set()], ap.vector_sec)

        nursery.start_soon(events)
        command = [sys.executable, "-m", "bench.attackers", vector, "127.0.0.1", str(edge.port),
                   str(b.certs / "ca.crt"), "--duration", str(ap.vector_sec), "--http-port", str(http_port)]
        done = await trio.run_process(command, capture_stdout=True, check=False,
                                      preexec_fn=lambda: machine.pin(b.cpus.load))
        lines = done.stdout.decode().strip().splitlines()
        attacker = json.loads(lines[-1]) if lines else {"error": f"exit {done.returncode}"}
        nursery.cancel_scope.cancel()
    end = await b.kafka.wait_count(topics.file_hash, start, sent, timeout=15)
    records = await b.kafka.read(topics.file_hash, start, end)
    latencies = [r.append_ms - wire.stamp_of(json.loads(r.value)["request_id"]) / 1e6 for r in records]
    await trio.sleep(ap.after_sec)
    after = machine.sample(edge.pid).rss_bytes
    refused_after = _refusals(await _get(http_port, "/metrics", 5))
    result = {
        "vector": vector,
        "registration_ms": stats.summarize(probes.registrations_ms),
        "registration_failures": probes.registration_failures,
        "events_sent": sent, "events_in_kafka": len(records),
        "event_latency_ms": stats.summarize(latencies),
        "health_ok": probes.health[0], "health_probes": probes.health[1],
        "rss_baseline_mib": baseline / 2**20,
        "rss_peak_mib": max(probes.rss, default=baseline) / 2**20,
        "rss_after_mib": after / 2**20,
        "good_peers_alive": sum(1 for p in peers if not p.ended.is_set()),
        "connections_refused": {k: v - refused_before.get(k, 0) for k, v in refused_after.items()
                                if v - refused_before.get(k, 0)},
        "attacker": attacker,
    }
    print(f"  {vector}: {result}", file=sys.stderr)
    return result


async def abuse(b: Bench, _p: Any, ap: AbuseParams = AbuseParams()) -> dict[str, Any]:
    # The default limits, except: no peer authentication (the load peers have no tokens), and an idle
    # timeout within a shortened attack (GRPC_IDLE_TIMEOUT_SEC 30 s by default).
    edge, topics = await b.start_edge("abuse", peer_auth_mode="none", health_http_address="127.0.0.1:0",
                                      heartbeat_interval_sec=300, peer_timeout_sec=3600,
                                      grpc_idle_timeout_sec=min(30.0, ap.vector_sec / 2))
    ssl_context = wire.client_ssl_context(str(b.certs / "ca.crt"))
    steps = []
    try:
        async with trio.open_nursery() as nursery:
            peers = [wire.Peer(f"good-{i}", lambda *_: None) for i in range(GOOD_PEERS)]
            for peer in peers:
                await nursery.start(peer.run, "127.0.0.1", edge.port, ssl_context, wire.registration(peer.peer_id, 10))
            for vector in ap.vectors:
                steps.append(await _vector(b, edge, topics, peers, vector, ap, ssl_context))
            for peer in peers:
                await peer.close()
            nursery.cancel_scope.cancel()
    finally:
        await edge.stop()
    figures = []
    for s in steps:
        v, reg, ev = s["vector"], s["registration_ms"], s["event_latency_ms"]
        health = s["health_ok"] / max(s["health_probes"], 1) * 100
        figures += [
            Figure(f"abuse {v}: good registration p50", reg["p50"], "ms", note=f"{s['registration_failures']} failed"),
            Figure(f"abuse {v}: good registration p99", reg["p99"], "ms", target="<= 500 ms", met=at_most(500)(reg["p99"])),
            Figure(f"abuse {v}: good event p50 / p99", ev["p50"], "ms", note=f"p99 {ev['p99']:.1f} ms, "
                   f"{s['events_in_kafka']}/{s['events_sent']} in Kafka"),
            Figure(f"abuse {v}: /healthz success", health, "%", target="100 %", met=at_least(100)(health)),
            Figure(f"abuse {v}: edge RSS peak - baseline", s["rss_peak_mib"] - s["rss_baseline_mib"], "MiB",
                   note=f"baseline {s['rss_baseline_mib']:.0f} MiB"),
            Figure(f"abuse {v}: RSS {ap.after_sec:g} s after - baseline", s["rss_after_mib"] - s["rss_baseline_mib"],
                   "MiB", target="<= 16 MiB", met=at_most(16)(s["rss_after_mib"] - s["rss_baseline_mib"]),
                   note=json.dumps(s["connections_refused"])[:100]),
        ]
    return {"figures": figures, "steps": steps, "params": attrs.asdict(ap), "edge_log_errors": edge.errors}
