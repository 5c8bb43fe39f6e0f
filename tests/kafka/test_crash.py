"""At least once across a crash: a real `python -m edge run` child killed with SIGKILL mid-flow.

Rules: real broker, real grpcio peers over TLS, real clock; waits only for conditions under deadlines.
The test prints the duplicates it saw (the figure docs/kafka.md quotes).
"""

from __future__ import annotations

import datetime
import signal
from pathlib import Path

import pytest
import trio

from testing.kafka.client import produce_records
from testing.process import EdgeProcess
from tests.kafka.support import Collector, command

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PEERS = [f"peer-{i}" for i in range(10)]
TOTAL = 1000


def edge_env(edge_id: str, bootstrap: str, tls_files, idempotence: bool) -> dict[str, str]:
    return {
        "EDGE_ID": edge_id,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_GROUP_ID": f"{edge_id}-group",
        "KAFKA_ENABLE_IDEMPOTENCE": "true" if idempotence else "false",
        "KAFKA_SESSION_TIMEOUT_SEC": "6",
        "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": f"{edge_id}-lifecycle",
        "KAFKA_PEER_PRESENCE_TOPIC": f"{edge_id}-presence",
        "KAFKA_PEER_CATALOG_UPDATES_TOPIC": f"{edge_id}-catalog",
        "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
        "GRPC_CERT_PATH": str(tls_files.cert_path),
        "GRPC_KEY_PATH": str(tls_files.key_path),
        "LOG_LEVEL": "info",
    }


async def connect_all(nursery: trio.Nursery, port: int, ca_pem: bytes) -> dict[str, Collector]:
    return {p: await Collector.connect(nursery, p, port, ca_pem) for p in PEERS}


async def test_sigkill_mid_flow_then_restart_delivers_every_command(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files, tmp_path
):
    """1,000 commands for 10 peers, produced in steps; the edge gets SIGKILL once about a third has
    arrived, and a new edge process with the same id and group takes over: every command reaches its
    peer at least once. Commands carry `expires_at`, so the ones read while a peer is between the two
    edges are held, not dead-lettered."""
    env = edge_env(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    topic = f"edge-commands-{kafka_topic_prefix}"
    expires_at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)).isoformat()
    records = [
        (PEERS[n % 10], command(PEERS[n % 10], f"r-{n:04d}", expires_at=expires_at)) for n in range(TOTAL)
    ]
    received: list[str] = []
    async with trio.open_nursery() as nursery:
        first = await EdgeProcess.start(nursery, "run", env=env, cwd=tmp_path)
        second: EdgeProcess | None = None
        collectors: dict[str, Collector] = {}
        try:
            port = (await first.wait_event("edge_started"))["port"]
            collectors = await connect_all(nursery, port, tls_files.ca_pem)
            await first.wait_event("kafka_consumer_started")

            async def produce_in_steps() -> None:
                for start in range(0, TOTAL, 50):
                    await produce_records(kafka_bootstrap, topic, records[start : start + 50])
                    await trio.sleep(0.05)  # pacing the load, so the kill lands mid-flow

            nursery.start_soon(produce_in_steps)
            with trio.fail_after(60):
                while sum(len(c.messages) for c in collectors.values()) < TOTAL // 3:
                    await trio.sleep(0.01)
            first.signal(signal.SIGKILL)
            assert await first.wait_exit(10) == -signal.SIGKILL
            received += [m.request_id for c in collectors.values() for m in c.messages]
            for collector in collectors.values():
                collector.close()

            second = await EdgeProcess.start(nursery, "run", env=env, cwd=tmp_path)
            port = (await second.wait_event("edge_started"))["port"]
            collectors = await connect_all(nursery, port, tls_files.ca_pem)
            expected = {f"r-{n:04d}" for n in range(TOTAL)}
            with trio.fail_after(90):
                while not expected <= set(received) | {m.request_id for c in collectors.values() for m in c.messages}:
                    await trio.sleep(0.1)
            received += [m.request_id for c in collectors.values() for m in c.messages]
            second.signal(signal.SIGTERM)
            assert await second.wait_exit(30) == 0
        finally:
            for collector in collectors.values():
                collector.close()
            first.kill()
            if second is not None:
                second.kill()
    duplicates = len(received) - len(set(received))
    print(f"SIGKILL: {len(received)} deliveries of {TOTAL} commands, {duplicates} duplicates")
    assert set(received) == {f"r-{n:04d}" for n in range(TOTAL)}
    assert not [e for e in second.events if e.get("event") == "command_dead_lettered"]
