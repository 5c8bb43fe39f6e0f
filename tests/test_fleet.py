"""Several edges on one broker: peers move between edges, commands follow them (docs/scaling.md).

Rules: each edge is `edge.serve` itself (testing/harness.py) on a real TLS port; two edges run
in this one Trio process with their own EDGE_ID, command topic and consumer group, and share the
lifecycle and presence topics (named after the test). Peers are real grpcio clients. Real clock;
every wait is for a condition under a deadline; figures are printed for docs/scaling.md, never
asserted as timings.
"""

from __future__ import annotations

import contextlib
import datetime
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from aiokafka import AIOKafkaProducer

from edge.config import Settings
from edge.nursery import utc_now
from testing.grpcio_peer import GrpcioPeer
from testing.harness import running_edge
from testing.kafka.client import consume_records, produce_records
from testing.process import EdgeProcess
from testing.settings import edge_settings
from tests.kafka.support import command

pytestmark = pytest.mark.kafka


def fleet_settings(prefix: str, edge: str, bootstrap: str, tls_files: Any, idempotence: bool, **overrides: Any) -> Settings:
    """One edge of the test's fleet: its own id, command topic and group (the default template);
    the fleet's shared lifecycle and presence topics."""
    shared = {
        "kafka_group_id": "edge-service-{}",
        "kafka_peer_lifecycle_events_topic": f"{prefix}-lifecycle",
        "kafka_peer_presence_topic": f"{prefix}-presence",
    }
    return edge_settings(f"{prefix}-{edge}", bootstrap, tls_files, idempotence, **{**shared, **overrides})


async def register(port: int, ca_pem: bytes, peer_id: str) -> GrpcioPeer:
    peer = GrpcioPeer(port, root_certificates=ca_pem, own_connection=True)
    peer.register(peer_id, request_id=f"reg-{peer_id}")
    reply = await peer.receive_kind("registration_response", timeout=30)
    assert reply.registration_response.success
    return peer


async def lifecycle(bootstrap: str, settings: Settings, count: int) -> list[dict[str, Any]]:
    records = await consume_records(bootstrap, settings.kafka_peer_lifecycle_events_topic, count=count, timeout=30)
    return [record.value for record in records]


async def test_a_peer_moving_to_another_edge_is_replaced_there_and_its_commands_follow(
    kafka_bootstrap: str, kafka_topic_prefix: str, tls_files: Any, kafka_supports_idempotence: bool
) -> None:
    """Register on A, then on B: A's stream ends ABORTED within a second, A publishes
    `disconnected(replaced)` with the lower epoch, B `connected` with the higher; a command put on A's
    topic reaches the peer on B (forwarded, `hops` 1, `forwarded_from` A)."""
    a = fleet_settings(kafka_topic_prefix, "a", kafka_bootstrap, tls_files, kafka_supports_idempotence)
    b = fleet_settings(kafka_topic_prefix, "b", kafka_bootstrap, tls_files, kafka_supports_idempotence)
    async with running_edge(a) as edge_a, running_edge(b) as edge_b:
        await edge_a.caught_up()
        await edge_b.caught_up()
        old = await register(edge_a.port, tls_files.ca_pem, "mover")
        with trio.fail_after(30):
            while edge_b.registry.presence.get("mover") is None:
                await trio.sleep(0.01)  # B learns of it from Kafka
        new = await register(edge_b.port, tls_files.ca_pem, "mover")
        registered = time.monotonic()
        code, _message = await old.wait_status(timeout=30)
        took = time.monotonic() - registered
        print(f"cross-edge takeover: old stream ended {took * 1000:.0f} ms after the new registration")
        assert code.name == "ABORTED"

        values = [v for v in await lifecycle(kafka_bootstrap, a, 3) if v["peer_id"] == "mover"]
        by_kind = {(v["edge_id"], v["event_type"]): v for v in values}
        first = by_kind[(a.edge_id, "connected")]
        gone = by_kind[(a.edge_id, "disconnected")]
        moved = by_kind[(b.edge_id, "connected")]
        assert gone["reason"] == "replaced"
        assert gone["epoch"] == first["epoch"] < moved["epoch"]

        await produce_records(kafka_bootstrap, a.commands_topic, [("mover", command("mover", "via-a"))])
        message = await new.receive_kind("file_delete_request", timeout=30)
        assert message.request_id == "via-a"
        forwarded = await consume_records(kafka_bootstrap, b.commands_topic, count=1, timeout=30)
        assert forwarded[0].value["hops"] == 1
        assert forwarded[0].value["forwarded_from"] == a.edge_id
        new.close()
        old.close()


async def test_a_command_addressed_to_any_edge_reaches_the_peer_wherever_it_is(
    kafka_bootstrap: str, kafka_topic_prefix: str, tls_files: Any, kafka_supports_idempotence: bool
) -> None:
    """A command sent before the peer is anywhere, with `expires_at`, is held; the peer then comes up on
    B and gets it. It moves to A: a command put on B's topic follows it there."""
    a = fleet_settings(kafka_topic_prefix, "a", kafka_bootstrap, tls_files, kafka_supports_idempotence)
    b = fleet_settings(kafka_topic_prefix, "b", kafka_bootstrap, tls_files, kafka_supports_idempotence)
    async with running_edge(a) as edge_a, running_edge(b) as edge_b:
        await edge_a.caught_up()
        await edge_b.caught_up()
        expires = (utc_now() + datetime.timedelta(seconds=60)).isoformat()
        await produce_records(
            kafka_bootstrap, a.commands_topic, [("roamer", command("roamer", "held", expires_at=expires))]
        )
        await trio.sleep(1)  # A has read it and holds it: nobody has the peer yet
        on_b = await register(edge_b.port, tls_files.ca_pem, "roamer")
        assert (await on_b.receive_kind("file_delete_request", timeout=30)).request_id == "held"
        on_a = await register(edge_a.port, tls_files.ca_pem, "roamer")
        await on_b.wait_status(timeout=30)
        await produce_records(kafka_bootstrap, b.commands_topic, [("roamer", command("roamer", "via-b"))])
        assert (await on_a.receive_kind("file_delete_request", timeout=30)).request_id == "via-b"
        on_a.close()
        on_b.close()


async def test_an_edge_restarted_with_a_clock_behind_still_numbers_higher_epochs(
    kafka_bootstrap: str, kafka_topic_prefix: str, tls_files: Any, kafka_supports_idempotence: bool
) -> None:
    """The same EDGE_ID started again, its wall clock an hour behind: presence (read back from Kafka
    before the edge is ready) still puts its peers' new epochs above their old ones."""
    a = fleet_settings(kafka_topic_prefix, "a", kafka_bootstrap, tls_files, kafka_supports_idempotence)
    epochs: list[int] = []
    behind: Callable[[], datetime.datetime] = lambda: utc_now() - datetime.timedelta(hours=1)  # noqa: E731
    for now in (utc_now, behind):
        async with running_edge(a, now=now) as edge:
            await edge.caught_up()
            peer = await register(edge.port, tls_files.ca_pem, "restarted")
            sessions = edge.registry.sessions()
            epochs.append(sessions[0].info.epoch)
            peer.close()
    assert epochs[1] > epochs[0]
    values = await lifecycle(kafka_bootstrap, a, 4)
    connected = {v["epoch"] for v in values if v["event_type"] == "connected"}  # at least once: repeats
    assert connected == set(epochs)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["per_edge", "shared"])
async def test_an_edge_restarting_or_dying_does_not_pause_commands_on_another(
    kafka_bootstrap: str,
    kafka_topic_prefix: str,
    tls_files: Any,
    kafka_supports_idempotence: bool,
    tmp_path: Path,
    layout: str,
) -> None:
    """Commands flow to a peer on B at 20 per second while A (a child process) starts, stops with
    SIGTERM, starts, is SIGKILLed and starts again. Every command arrives; the worst latency of a
    command on B in each phase is printed for docs/scaling.md. `per_edge` is the default group layout;
    `shared` (one group for both edges, the old default) is the comparison."""
    group = f"{kafka_topic_prefix}-shared" if layout == "shared" else "edge-service-{}"
    b = fleet_settings(
        kafka_topic_prefix, "b", kafka_bootstrap, tls_files, kafka_supports_idempotence, kafka_group_id=group
    )
    a_env = {
        "EDGE_ID": f"{kafka_topic_prefix}-a",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": str(kafka_supports_idempotence).lower(),
        "KAFKA_GROUP_ID": group,
        "KAFKA_SESSION_TIMEOUT_SEC": str(b.kafka_session_timeout_sec),
        "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": b.kafka_peer_lifecycle_events_topic,
        "KAFKA_PEER_PRESENCE_TOPIC": b.kafka_peer_presence_topic,
        "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
        "GRPC_USE_TLS": "false",
        "LOG_LEVEL": "info",
    }
    sent: dict[str, tuple[str, float]] = {}
    arrived: dict[str, float] = {}
    async with running_edge(b) as edge_b, trio.open_nursery() as nursery:
        await edge_b.caught_up()
        peer = await register(edge_b.port, tls_files.ca_pem, "steady")

        async def collect() -> None:
            while True:
                message = await peer.receive(timeout=300)
                if message is None:
                    return
                if message.WhichOneof("payload") == "file_delete_request":
                    arrived.setdefault(message.request_id, trio.current_time())

        async def start_a() -> EdgeProcess:
            edge = await EdgeProcess.start(nursery, "run", env=a_env, cwd=tmp_path)
            await edge.wait_event("presence_caught_up", timeout=120)
            await edge.wait_event("kafka_partitions_assigned", timeout=120)
            return edge

        nursery.start_soon(collect)
        async with kafka_producer(kafka_bootstrap) as send:
            phase = "quiet"
            stop = trio.Event()

            async def produce() -> None:
                n = 0
                while not stop.is_set():
                    request_id = f"c-{n}"
                    n += 1
                    sent[request_id] = (phase, trio.current_time())
                    await send(b.commands_topic, "steady", command("steady", request_id))
                    await trio.sleep(0.05)

            nursery.start_soon(produce)
            await trio.sleep(3)
            phase = "A starting"
            edge_a = await start_a()
            phase = "A stopping (SIGTERM)"
            edge_a.signal(signal.SIGTERM)
            await edge_a.wait_exit(timeout=60)
            phase = "A starting again"
            edge_a = await start_a()
            await trio.sleep(1)
            phase = "A SIGKILLed"
            edge_a.kill()
            await edge_a.wait_exit(timeout=60)
            phase = "A restarting at once after the kill"
            edge_a = await start_a()
            phase = "after"
            await trio.sleep(b.kafka_session_timeout_sec + 2)
            stop.set()
            edge_a.signal(signal.SIGTERM)
            await edge_a.wait_exit(timeout=60)
        with trio.fail_after(60):
            while len(arrived) < len(sent):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
        peer.close()
    worst: dict[str, float] = {}
    for request_id, (phase_of, at) in sent.items():
        worst[phase_of] = max(worst.get(phase_of, 0.0), arrived[request_id] - at)
    shown = ", ".join(f"{name}: {value * 1000:.0f} ms" for name, value in worst.items())
    print(f"worst command latency on B ({layout} groups), by phase of A: {shown}")
    assert set(arrived) == set(sent)


@contextlib.asynccontextmanager
async def kafka_producer(bootstrap: str) -> AsyncIterator[Callable[[str, str, bytes], Awaitable[None]]]:
    """One aiokafka producer on a trio-asyncio loop of its own; `await send(topic, key, value)`."""
    async with trio_asyncio.open_loop():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await trio_asyncio.aio_as_trio(producer.start)()
        try:

            async def send(topic: str, key: str, value: bytes) -> None:
                await trio_asyncio.aio_as_trio(producer.send_and_wait)(topic, value, key=key.encode())

            yield send
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await trio_asyncio.aio_as_trio(producer.stop)()
