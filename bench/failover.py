"""`python -m bench.failover`: how long an edge's peers take to re-register on another edge after it is
SIGKILLed (docs/scaling.md, "Failover").

Setup: one Kafka broker (the bench's, or `--bootstrap`), two real `python -m edge run` children A and
B sharing the lifecycle and presence topics, TLS, and `python -m edge peer-sim --edge A,B` (reconnecting
with its default backoff: a random part of 0.5 s after a session that had registered). B is started only
once every peer has registered on A, so A holds all of them. Then A is SIGKILLed and the clock runs
from the kill to each peer's first `peer_connected` on B (the timestamp of B's own log line).

Printed (and written as JSON to bench/results/): p50, p99 and max per peer, the time to the last peer,
peer-sim's connection attempts, and the load average. `--connect-rate 0` (the default here) lets
peer-sim reconnect without pacing, as independent real peers would; peer-sim's own default is 200/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench.runner import bench_bootstrap, raise_fd_limit
from bench.stats import percentile
from edge.certs import write_dev_certificates
from testing.kafka.broker import free_port
from testing.process import EdgeProcess

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2, help="peer-sim processes")
    parser.add_argument("--connect-rate", type=float, default=0.0, help="peer-sim --connect-rate (0: unpaced)")
    parser.add_argument("--bootstrap", help="use this Kafka broker instead of starting one")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this long per phase")
    return parser.parse_args(argv)


def _stamp(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _connected(edge: EdgeProcess) -> dict[str, float]:
    """Each peer's first `peer_connected` on `edge` (wall-clock seconds)."""
    first: dict[str, float] = {}
    for event in edge.events:
        if event.get("event") == "peer_connected" and "peer_id" in event:
            first.setdefault(event["peer_id"], _stamp(event))
    return first


async def _until(condition: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout) as scope:
        while not condition():
            await trio.sleep(0.2)
    if scope.cancelled_caught:
        raise RuntimeError(f"timed out waiting for {what}")


async def run(args: argparse.Namespace, bootstrap: str, out: Path) -> dict[str, Any]:
    certs = write_dev_certificates(out / "certs")
    run_id = f"failover-{int(time.time())}"
    ports = {"a": free_port("127.0.0.1"), "b": free_port("127.0.0.1")}

    def env(name: str) -> dict[str, str]:
        return {
            "EDGE_ID": f"{run_id}-{name}",
            "GRPC_SERVER_ADDRESS": f"127.0.0.1:{ports[name]}",
            "GRPC_CERT_PATH": str(certs.server_cert),
            "GRPC_KEY_PATH": str(certs.server_key),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": f"{run_id}-lifecycle",
            "KAFKA_PEER_PRESENCE_TOPIC": f"{run_id}-presence",
            "KAFKA_PEER_CATALOG_UPDATES_TOPIC": f"{run_id}-catalog",
            "PEER_REGISTRATION_RATE_PER_ADDRESS": "0",  # every simulated peer comes from 127.0.0.1
            "LOG_LEVEL": "info",
        }

    sim_argv = [
        sys.executable, "-m", "edge", "peer-sim", "--edge", f"127.0.0.1:{ports['a']},127.0.0.1:{ports['b']}",
        "--peers", str(args.peers), "--processes", str(args.processes), "--id-prefix", run_id,
        "--ca", str(certs.ca_cert), "--no-token", "--catalog-size", "1",
        "--connect-rate", str(args.connect_rate), "--progress-interval", "5",
    ]
    async with trio.open_nursery() as nursery:
        edge_a = await EdgeProcess.start(nursery, "run", env=env("a"), cwd=out)
        await edge_a.wait_event("presence_caught_up", timeout=args.timeout)
        sim = await trio.lowlevel.open_process(
            sim_argv, stdin=subprocess.DEVNULL, stdout=(out / "peer-sim.out").open("wb"),
            stderr=(out / "peer-sim.err").open("wb"), start_new_session=True,
        )
        began = time.monotonic()
        await _until(lambda: len(_connected(edge_a)) >= args.peers, args.timeout, "every peer on A")
        on_a_sec = time.monotonic() - began
        edge_b = await EdgeProcess.start(nursery, "run", env=env("b"), cwd=out)
        await edge_b.wait_event("presence_caught_up", timeout=args.timeout)
        await trio.sleep(2)  # B settles (its consumer joins its group) before the kill
        load_before = os.getloadavg()
        killed_at = time.time()
        edge_a.process.send_signal(signal.SIGKILL)
        await _until(lambda: len(_connected(edge_b)) >= args.peers, args.timeout, "every peer on B")
        load_after = os.getloadavg()
        sim.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            await sim.wait()
        edge_b.signal(signal.SIGTERM)
        await edge_b.wait_exit(timeout=60)
        nursery.cancel_scope.cancel()
    delays = sorted(at - killed_at for at in _connected(edge_b).values())
    summary: dict[str, Any] = {}
    for line in (out / "peer-sim.out").read_text().splitlines():
        try:
            summary = json.loads(line)
        except ValueError:
            continue
    return {
        "peers": args.peers,
        "broker": "single" if not args.bootstrap else args.bootstrap,
        "tls": True,
        "connect_rate": args.connect_rate,
        "peer_sim_processes": args.processes,
        "all_on_a_sec": round(on_a_sec, 2),
        "reregistered_on_b": len(delays),
        "p50_sec": round(percentile(delays, 50), 3),
        "p99_sec": round(percentile(delays, 99), 3),
        "max_sec": round(delays[-1], 3),
        "first_sec": round(delays[0], 3),
        "load_average_before_kill": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "peer_sim": {k: summary.get(k) for k in ("connect_failures", "registration_failures", "stream_endings",
                                                  "connections")},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{stamp}-failover"
    out.mkdir(parents=True)
    with bench_bootstrap(args.bootstrap) as (bootstrap, _pid):
        result = trio.run(run, args, bootstrap, out)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
