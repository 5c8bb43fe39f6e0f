"""SIGTERM to a real `python -m edge run` process with 50 connected grpcio peers over TLS, ten of
which have just been handed a command: every peer gets UNAVAILABLE, 50 `disconnected(shutdown)`
events are in Kafka, every delivered command's offset is committed, and the process exits 0 well
within SHUTDOWN_DEADLINE_SEC. And the drain deadline itself: with Kafka unreachable, the process
gives up at SHUTDOWN_DEADLINE_SEC and says so (exit 1)."""

from __future__ import annotations

import collections
import signal

import grpc
import pytest
import trio

from edge.ops.gc_policy import GC_THRESHOLDS
from testing.grpcio_peer import GrpcioPeer
from testing.kafka.client import consume_records, create_topics, group_offsets, produce_records
from testing.process import EdgeProcess

pytestmark = pytest.mark.kafka

PEERS = 50
COMMANDED = 10
DEADLINE_SEC = 20.0


def edge_env(edge_id, bootstrap, tls_files, idempotence, **extra):
    return {
        "EDGE_ID": edge_id,
        "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
        "GRPC_CERT_PATH": str(tls_files.cert_path),
        "GRPC_KEY_PATH": str(tls_files.key_path),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "true" if idempotence else "false",
        "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": f"{edge_id}-lifecycle",
        "KAFKA_PEER_PRESENCE_TOPIC": f"{edge_id}-presence",
        "KAFKA_PEER_CATALOG_UPDATES_TOPIC": f"{edge_id}-catalog",
        "KAFKA_GROUP_ID": f"{edge_id}-group",
        "PEER_AUTH_MODE": "none",
        "PEER_REGISTRATION_RATE_PER_ADDRESS": "0",  # every test peer comes from 127.0.0.1
        "SHUTDOWN_DEADLINE_SEC": str(DEADLINE_SEC),
        **extra,
    }


async def test_sigterm_drains_50_peers_and_exits_0(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files, tmp_path
):
    env = edge_env(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    peers: list[GrpcioPeer] = []
    await create_topics(kafka_bootstrap, [f"{kafka_topic_prefix}-lifecycle", f"{kafka_topic_prefix}-catalog"], partitions=3)
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(nursery, "run", env=env, cwd=tmp_path)
        try:
            port = (await edge.wait_event("edge_started"))["port"]
            assert [e["after"] for e in edge.events if e.get("event") == "gc_thresholds"] == [list(GC_THRESHOLDS)]
            await edge.wait_event("kafka_producer_connected")
            for index in range(PEERS):
                peer = GrpcioPeer(port, root_certificates=tls_files.ca_pem)
                peers.append(peer)
                peer.register(f"drain-{index:02d}")
            for peer in peers:
                reply = await peer.receive_kind("registration_response", timeout=30)
                assert reply.registration_response.success
            commands = [
                (f"drain-{index:02d}", {"peer_id": f"drain-{index:02d}", "command_type": "file_hash", "request_id": f"c-{index}",
                                        "command_data": {"catalog_uuid": "c", "hash_types": ["sha256"]}})
                for index in range(COMMANDED)
            ]
            await produce_records(kafka_bootstrap, f"edge-commands-{kafka_topic_prefix}", commands)
            for index in range(COMMANDED):
                delivered = await peers[index].receive_kind("file_hash_request", timeout=60)
                assert delivered.request_id == f"c-{index}"
            began = trio.current_time()  # at once: the commits of these deliveries are still due
            edge.signal(signal.SIGTERM)
            assert await edge.wait_exit(timeout=DEADLINE_SEC + 10) == 0
            took = trio.current_time() - began
            statuses = [await peer.wait_status(timeout=10) for peer in peers]
        finally:
            edge.kill()
            for peer in peers:
                peer.close()
        nursery.cancel_scope.cancel()
    assert took < DEADLINE_SEC
    assert collections.Counter(code for code, _ in statuses) == {grpc.StatusCode.UNAVAILABLE: PEERS}
    assert {details for _, details in statuses} == {"edge shutting down"}
    assert edge.count("shutdown_requested", signal="SIGTERM") == 1
    assert edge.count("peer_disconnected", reason="shutdown") == PEERS
    assert edge.count("shutdown_complete") == 1 and edge.count("shutdown_deadline_exceeded") == 0
    assert edge.count("edge_stopped") == 1
    assert edge.count("grpc_listener_closed", connections=PEERS) == 1  # one line for them all
    records = await consume_records(kafka_bootstrap, f"{kafka_topic_prefix}-lifecycle", count=2 * PEERS, timeout=60)
    # At least once: a produce retry may repeat a record; consumers dedupe by session id and epoch.
    by_peer: dict[str, list[tuple[str, str | None, str]]] = collections.defaultdict(list)
    for record in records:
        event = (record.value["event_type"], record.value.get("reason"), record.value["session_id"])
        if event not in by_peer[record.key]:
            by_peer[record.key].append(event)
    assert len(by_peer) == PEERS
    for events in by_peer.values():
        assert [(kind, reason) for kind, reason, _ in events] == [("connected", None), ("disconnected", "shutdown")]
        assert events[0][2] == events[1][2]
    committed, ends = await group_offsets(kafka_bootstrap, f"{kafka_topic_prefix}-group", f"edge-commands-{kafka_topic_prefix}")
    assert sum(ends.values()) == COMMANDED
    assert {partition: committed.get(partition, (0, ""))[0] for partition in ends} == ends
    print(f"\nSIGTERM with {PEERS} TLS peers: exit 0 after {took:.2f} s")


async def test_drain_deadline_exits_1_when_kafka_never_answers(tls_files, tmp_path):
    """Kafka unreachable: the flush cannot finish; past SHUTDOWN_DEADLINE_SEC the process exits 1."""
    with trio.socket.socket() as placeholder:  # a port nothing listens on
        await placeholder.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{placeholder.getsockname()[1]}"
    env = edge_env("drain-deadline", dead, tls_files, False, SHUTDOWN_DEADLINE_SEC="2", SHUTDOWN_TIMEOUT_SEC="30")
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(nursery, "run", env=env, cwd=tmp_path)
        try:
            port = (await edge.wait_event("edge_started"))["port"]
            peer = GrpcioPeer(port, root_certificates=tls_files.ca_pem)
            try:
                peer.register("stuck-peer")
                await peer.receive_kind("registration_response", timeout=30)
                began = trio.current_time()
                edge.signal(signal.SIGTERM)
                assert await edge.wait_exit(timeout=30) == 1
                took = trio.current_time() - began
            finally:
                peer.close()
        finally:
            edge.kill()
        nursery.cancel_scope.cancel()
    assert 2.0 <= took < 6.0
    assert edge.count("shutdown_deadline_exceeded", deadline_sec=2.0) == 1
