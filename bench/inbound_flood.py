"""Peak memory while registered peers flood an edge whose event path is stalled (GRPC_INBOUND_BUFFER_BYTES).

    python -m bench.inbound_flood --peers 1000 --budget-mib 64 --seconds 10

No Kafka at all: the edge's producer never connects, so its event buffer (sized for the registrations
and a few hundred events more) fills, every session stops taking messages, and what the peers send piles
up in the edge until the inbound budget stops them. Each run starts a fresh edge (`python -m edge run`),
registers `--peers` peers over TLS (bench.wire), takes the edge's RSS as the baseline, then every peer
sends ~1 KiB messages as fast as flow control lets it for `--seconds`, while the edge's RSS and its
`giggityflix_edge_inbound_buffered_bytes` / `_inbound_budget_pauses_total` are sampled.

It runs twice in the same process, so the two are measured on the same (loaded) machine: with the budget
given, and with a budget too large to matter (each stream then holds its queue and its window, which is
main's behaviour before the budget). One JSON line per run, then one with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench import machine, wire
from bench.edgeproc import EdgeProcess
from edge.certs import write_dev_certificates
from edge.proto import pb

UNBOUNDED = 1 << 40


def _flood_message(peer_id: str) -> bytes:
    return pb.PeerMessage(
        request_id=f"flood-{peer_id}", file_hash_response=pb.FileHashResponse(catalog_uuid="c", hashes={"f": "h" * 1000})
    ).SerializeToString()


async def _metrics(port: int) -> dict[str, float]:
    found: dict[str, float] = {}
    with trio.move_on_after(10):  # the edge's ops port shares its loop with the flood
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        for line in data.decode(errors="replace").splitlines():
            for name in ("giggityflix_edge_inbound_buffered_bytes", "giggityflix_edge_inbound_budget_pauses_total"):
                if line.startswith(name + " "):
                    found[name] = float(line.rsplit(" ", 1)[1])
    return found


async def run_once(peers: int, budget: int, seconds: float, certs: Any, log_dir: Path) -> dict[str, Any]:
    env = {
        "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
        "HEALTH_HTTP_ADDRESS": "127.0.0.1:0",
        "GRPC_CERT_PATH": str(certs.server_cert),
        "GRPC_KEY_PATH": str(certs.server_key),
        "PEER_AUTH_MODE": "none",
        "PEER_REGISTRATION_RATE_PER_ADDRESS": "0",
        "GRPC_MAX_CONNECTIONS_PER_ADDRESS": "0",
        "PEER_MESSAGE_RATE": "1000000",
        "PEER_MESSAGE_BURST": "1000000",
        "MAX_UNREGISTERED_STREAMS": str(max(1000, peers)),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing listens: the event path is stalled
        "KAFKA_EVENT_BUFFER_SIZE": str(3 * peers + 200),
        "GRPC_INBOUND_BUFFER_BYTES": str(budget),
        "LOG_LEVEL": "info",
    }
    cpus = frozenset(os.sched_getaffinity(0))
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(nursery, env, cpus=cpus, log_path=log_dir / f"edge-{budget}.log")
        http_port = int(edge.events["edge_started"]["http_port"])
        context = wire.client_ssl_context(str(certs.ca_cert))
        registered: list[wire.Peer] = []
        for i in range(peers):
            peer = wire.Peer(f"p{i:05d}", lambda *_: None)
            await nursery.start(peer.run, "127.0.0.1", edge.port, context, wire.registration(peer.peer_id, 0))
            registered.append(peer)
        await trio.sleep(1)
        baseline = machine.sample(edge.pid).rss_bytes
        rss: list[int] = []
        held: list[float] = []
        sent = [0]

        async def flood(peer: wire.Peer) -> None:
            message = _flood_message(peer.peer_id)
            try:
                while True:
                    await peer.send([message] * 16)
                    sent[0] += 16 * len(message)
            except trio.BrokenResourceError:
                pass

        async def sample_rss() -> None:
            while True:
                rss.append(machine.sample(edge.pid).rss_bytes)
                await trio.sleep(0.1)

        async def sample_held() -> None:
            while True:
                held.append((await _metrics(http_port)).get("giggityflix_edge_inbound_buffered_bytes", 0.0))
                await trio.sleep(0.25)

        started = time.monotonic()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as floods:
                floods.start_soon(sample_rss)
                floods.start_soon(sample_held)
                for peer in registered:
                    floods.start_soon(flood, peer)
        metrics = await _metrics(http_port)
        peak_vm = machine.sample(edge.pid).peak_rss_bytes
        for peer in registered:
            nursery.start_soon(peer.close)
        await edge.stop()
        nursery.cancel_scope.cancel()
    mib = 2**20
    return {
        "peers": peers,
        "budget_mib": round(budget / mib, 1) if budget < UNBOUNDED else None,
        "seconds": round(time.monotonic() - started, 1),
        "bytes_sent_by_peers_mib": round(sent[0] / mib, 1),
        "rss_baseline_mib": round(baseline / mib, 1),
        "rss_peak_mib": round(max(rss, default=baseline) / mib, 1),
        "rss_hwm_mib": round(peak_vm / mib, 1),
        "rss_growth_mib": round((max(rss, default=baseline) - baseline) / mib, 1),
        "rss_hwm_growth_mib": round((peak_vm - baseline) / mib, 1),
        "inbound_buffered_peak_mib": round(max(held, default=0.0) / mib, 1),
        "inbound_budget_pauses": metrics.get("giggityflix_edge_inbound_budget_pauses_total"),
    }


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * args.peers + 256)), hard))
    with tempfile.TemporaryDirectory() as directory:
        certs = write_dev_certificates(Path(directory), hostnames=("localhost",))
        budget = int(args.budget_mib * 2**20)
        for each in (budget, UNBOUNDED):
            figures = await run_once(args.peers, each, args.seconds, certs, Path(directory))
            if figures["budget_mib"] is not None:
                figures["rss_hwm_growth_over_budget"] = round(figures["rss_hwm_growth_mib"] / figures["budget_mib"], 2)
            print(json.dumps(figures), flush=True)
    print(json.dumps({"loadavg": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--budget-mib", type=float, default=64.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    trio.run(main, parser.parse_args())
