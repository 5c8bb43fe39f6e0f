"""The edge on a 3-broker Kafka cluster (`kafka_cluster`: KRaft, replication factor 3, min.insync.replicas 2).

Rules: real clock and real brokers (docs/design.md#mock-clock-real-io); every wait is for a condition under a deadline; the
load is paced with short sleeps (it is the test's load, not the edge's timing). Figures (lost and
duplicated events and commands across a broker SIGKILL, broker restart time) are printed for
docs/scaling.md, never asserted as timings. Every node is running again after each test.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio_asyncio

import edge
from edge.kafka.topics import ensure_topics, required_topics
from edge.ops.readiness import KafkaState
from edge.proto import pb
from testing.kafka.client import (
    NotEnoughRecords,
    Partition,
    consume_records,
    create_topics,
    describe_partitions,
    group_coordinator,
    produce_records,
)
from testing.process import EdgeProcess
from testing.settings import edge_settings
from tests.kafka.roaming import RoamingPeer, dead_letters, presence_view
from tests.kafka.support import Collector, command

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.cluster]

PEERS = 10
EVENTS_PER_PEER = 400
COMMANDS = 600
COMMAND_BATCH = 30


async def test_cluster_replicates_and_edge_topics_get_three_replicas(kafka_cluster, kafka_topic_prefix, tls_files):
    """All three brokers are registered; with KAFKA_TOPIC_REPLICATION_FACTOR=0 (auto) the edge creates
    its topics with 3 replicas, all in sync; a topic made with the client helper is replicated too."""
    settings = edge_settings(
        kafka_topic_prefix, kafka_cluster.bootstrap, tls_files, True, kafka_topic_replication_factor=0
    )
    async with trio_asyncio.open_loop():
        created = await ensure_topics(settings, timeout=60)
    assert set(created) == set(required_topics(settings))
    partitions = await describe_partitions(kafka_cluster.bootstrap, created)
    assert len(partitions) == len(created) * settings.kafka_topic_partitions
    assert {(len(p.replicas), len(p.isr)) for p in partitions} == {(3, 3)}
    assert {p.leader for p in partitions} <= {1, 2, 3}
    extra = f"{kafka_topic_prefix}-extra"
    await create_topics(kafka_cluster.bootstrap, [extra], partitions=2, replicas=3)
    # New partitions take a moment to show in every broker's Metadata.
    assert len(await _wait_isr_full(kafka_cluster.bootstrap, [extra], 3, timeout=30)) == 2


async def test_a_node_stopped_cleanly_leaves_a_writable_cluster_and_catches_up(
    kafka_cluster, kafka_unique_name, capsys
):
    """SIGTERM one node: acks=all writes still succeed (two replicas in sync, min.insync.replicas 2);
    started again, it rejoins every partition's in-sync replicas and nothing written meanwhile is lost."""
    bootstrap, topic = kafka_cluster.bootstrap, kafka_unique_name("stop")
    await create_topics(bootstrap, [topic], partitions=3, replicas=3)
    await _wait_isr_full(bootstrap, [topic], 3, timeout=30)
    began = time.monotonic()
    await trio.to_thread.run_sync(kafka_cluster.stop_node, 3)
    stop_sec = time.monotonic() - began
    records = [(f"k{i}", {"n": i}) for i in range(300)]
    await produce_records(bootstrap, topic, records, idempotent=True, timeout=60)
    assert {len(p.isr) for p in await describe_partitions(bootstrap, [topic])} == {2}
    start_sec = await trio.to_thread.run_sync(kafka_cluster.start_node, 3)
    await _wait_isr_full(bootstrap, [topic], 3, timeout=60)
    consumed = await consume_records(bootstrap, topic, count=len(records), timeout=60)
    assert sorted(r.value["n"] for r in consumed) == list(range(300))
    with capsys.disabled():
        print(f"\n# clean stop of a node: stop_sec={stop_sec:.2f} start_sec={start_sec:.2f}")


@attrs.define
class Figures:
    """What a broker kill under load cost, printed for docs/scaling.md."""

    events_sent: int = 0
    events_unique: int = 0
    events_duplicated: int = 0
    commands_sent: int = 0
    commands_unique: int = 0
    commands_duplicated: int = 0
    killed_node: int = 0
    killed_after_events: int = 0
    restart_sec: float = 0.0
    #: Longest time no command reached any peer, from the kill until the broker was back (or until the
    #: last command was sent, if sooner); it includes the test producer's own wait for a new leader.
    command_gap_while_down_sec: float = 0.0
    isr_full_after_restart_sec: float | None = None
    deadletters: int = 0

    def line(self) -> str:
        return " ".join(f"{key}={value}" for key, value in attrs.asdict(self).items())


async def _wait_isr_full(bootstrap: str, topics: list[str], replicas: int, timeout: float) -> list[Partition]:
    with trio.fail_after(timeout):
        while True:
            partitions = await describe_partitions(bootstrap, topics)
            if {p.topic for p in partitions} == set(topics) and all(len(p.isr) == replicas for p in partitions):
                return partitions
            await trio.sleep(0.2)


async def _all_records(bootstrap: str, topic: str, wanted: set[str], key: str, timeout: float) -> list[Any]:
    """Every record of `topic` once all `wanted` ids (value[key]) are among them, under a deadline."""
    count = len(wanted)
    with trio.fail_after(timeout):
        while True:
            try:
                records = await consume_records(bootstrap, topic, count=count, timeout=30)
            except NotEnoughRecords as short:
                records = short.records
            seen = {r.value[key] for r in records}
            if wanted <= seen:
                return records
            count = len(records) + len(wanted - seen)


@pytest.mark.parametrize("victim", ["event-leader", "group-coordinator"])
async def test_broker_sigkill_under_load_loses_no_event_or_command(
    victim, kafka_cluster, kafka_topic_prefix, tls_files, capsys
):
    """Two edges sharing the event topics, 5 grpcio peers on each: the peers publish 4,000 events while
    600 commands flow to them through their edges' command topics; a broker (the leader of the event
    topic's first partition, or the first edge's group coordinator) is SIGKILLed a third of the way in
    and started again a few seconds later. Every event reaches Kafka and every command reaches its peer;
    duplicates are counted, nothing is dead-lettered."""
    bootstrap = kafka_cluster.bootstrap
    shared = {
        field: f"{kafka_topic_prefix}-{suffix}"
        for field, suffix in (
            ("kafka_peer_lifecycle_events_topic", "lifecycle"),
            ("kafka_peer_catalog_updates_topic", "catalog"),
            ("kafka_file_delete_responses_topic", "delete"),
            ("kafka_file_hash_responses_topic", "hash"),
            ("kafka_screenshot_capture_responses_topic", "shot"),
            ("kafka_file_remap_responses_topic", "remap"),
        )
    }
    edges = [
        edge_settings(
            f"{kafka_topic_prefix}-{name}",
            bootstrap,
            tls_files,
            True,
            kafka_topic_replication_factor=0,
            kafka_request_timeout_sec=10.0,
            retry_max_retries=10,
            retry_max_delay_ms=2000,
            **shared,
        )
        for name in ("a", "b")
    ]
    figures = Figures(killed_after_events=PEERS * EVENTS_PER_PEER // 3)
    peer_ids = [f"{kafka_topic_prefix}-p{i}" for i in range(PEERS)]  # peer i on edge i % 2
    third_sent = trio.Event()
    window = [0.0, 0.0]  # Trio time of the kill, and of the broker answering again
    last_sent = [0.0]  # Trio time the last command was acknowledged by Kafka
    killed = trio.Event()
    restarted = trio.Event()
    events_topic = shared["kafka_file_hash_responses_topic"]
    topics = [events_topic, *(settings.commands_topic for settings in edges)]

    async def wait_ready(state: KafkaState) -> None:
        with trio.fail_after(90):
            while not state.ready:
                await state.changed.wait()

    async def publish(collector: Collector) -> None:
        for n in range(EVENTS_PER_PEER):
            collector.peer.send(
                pb.PeerMessage(
                    request_id=f"{collector.peer_id}/{n}",
                    file_hash_response=pb.FileHashResponse(catalog_uuid=f"c{n}", hashes={"sha256": "ab"}),
                )
            )
            figures.events_sent += 1
            if figures.events_sent >= figures.killed_after_events:
                third_sent.set()
            if n % 20 == 19:
                await trio.sleep(0.05)  # pacing the load over ~1 s per 400 events and peer

    async def send_commands() -> None:
        for start in range(0, COMMANDS, COMMAND_BATCH):
            for index, settings in enumerate(edges):
                batch = [
                    (peer_ids[i % PEERS], command(peer_ids[i % PEERS], f"cmd-{i}"))
                    for i in range(start, start + COMMAND_BATCH)
                    if i % PEERS % len(edges) == index
                ]
                await produce_records(bootstrap, settings.commands_topic, batch, idempotent=True, timeout=60)
                figures.commands_sent += len(batch)
            await trio.sleep(0.1)
        last_sent[0] = trio.current_time()

    async def kill_and_restart() -> None:
        with trio.fail_after(60):
            await third_sent.wait()
        if victim == "event-leader":
            [first] = [p for p in await describe_partitions(bootstrap, [events_topic]) if p.partition == 0]
            figures.killed_node = first.leader
        else:
            figures.killed_node = await group_coordinator(bootstrap, edges[0].kafka_group_id)
        kafka_cluster.kill(figures.killed_node)
        window[0] = trio.current_time()
        killed.set()
        await trio.sleep(3.0)  # down for a few seconds while the load goes on
        figures.restart_sec = round(await trio.to_thread.run_sync(kafka_cluster.start_node, figures.killed_node), 2)
        window[1] = trio.current_time()
        began = time.monotonic()
        await _wait_isr_full(bootstrap, topics, 3, timeout=120)
        figures.isr_full_after_restart_sec = round(time.monotonic() - began, 2)
        restarted.set()

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            started = [await nursery.start(edge.serve, settings) for settings in edges]
            ports = [one.grpc_port for one in started]
            for one in started:
                await wait_ready(one.runtime.health.kafka)
            collectors = [
                await Collector.connect(nursery, p, ports[i % len(edges)], tls_files.ca_pem)
                for i, p in enumerate(peer_ids)
            ]
            try:
                async with trio.open_nursery() as load:
                    load.start_soon(kill_and_restart)
                    load.start_soon(send_commands)
                    for collector in collectors:
                        load.start_soon(publish, collector)
                assert killed.is_set() and restarted.is_set()
                records = await _all_records(
                    bootstrap, events_topic, {f"{p}/{n}" for p in peer_ids for n in range(EVENTS_PER_PEER)},
                    "request_id", timeout=180,
                )
                ids = collections.Counter(r.value["request_id"] for r in records)
                figures.events_unique = len(ids)
                figures.events_duplicated = sum(ids.values()) - len(ids)
                received = await _wait_commands(collectors, COMMANDS // PEERS, timeout=180)
                figures.commands_unique = len(received)
                figures.commands_duplicated = sum(received.values()) - len(received)
                end = min(window[1], last_sent[0])  # no gap counted once every command was sent
                arrivals = sorted(t for c in collectors for t in c.arrived_at if window[0] <= t <= end)
                marks = [window[0], *arrivals, end]
                figures.command_gap_while_down_sec = round(max(b - a for a, b in zip(marks, marks[1:], strict=False)), 2)
                for settings in edges:
                    try:
                        dead = await consume_records(bootstrap, settings.deadletter_topic, count=1, timeout=3)
                    except NotEnoughRecords as short:
                        dead = short.records
                    figures.deadletters += len(dead)
            finally:
                for collector in collectors:
                    collector.close()
            nursery.cancel_scope.cancel()
    with capsys.disabled():
        print(f"\n# broker kill under load ({victim}): {figures.line()}")
    assert figures.events_unique == figures.events_sent == PEERS * EVENTS_PER_PEER
    assert figures.commands_unique == figures.commands_sent == COMMANDS
    assert figures.deadletters == 0
    assert not [e for e in logs if e["event"] in ("kafka_events_unflushed", "kafka_record_rejected", "asyncio_unhandled")]


async def _wait_commands(collectors: list[Collector], per_peer: int, timeout: float) -> collections.Counter[str]:
    """Command ids (each file_delete request's catalog uuid) the peers received, once every peer has
    `per_peer` distinct ones."""

    def ids(collector: Collector) -> list[str]:
        return [
            uuid
            for message in collector.messages
            if message.WhichOneof("payload") == "file_delete_request"
            for uuid in message.file_delete_request.catalog_uuids
        ]

    with trio.fail_after(timeout):
        for collector in collectors:
            while len(set(ids(collector))) < per_peer:
                await collector.wait_for(len(collector.messages) + 1, timeout=timeout)
    return collections.Counter(uuid for collector in collectors for uuid in ids(collector))


EDGE_PEERS = 3  # per edge


async def test_an_edge_sigkilled_hands_its_peers_to_the_other_and_commands_follow(
    kafka_cluster, kafka_topic_prefix, tmp_path, capsys
):
    """Two real edge processes A and B on the cluster, 3 grpcio peers on each, publishing; commands go
    to each peer by peer id through both edges' topics. A is SIGKILLed right after a burst of commands:
    its peers register again on B, presence converges (every peer's newest record is `connected` on B
    with a higher epoch than before), and commands sent after the kill flow through B's topic and A's.
    A's topic is drained only by A (docs/scaling.md), so A is started again with the same EDGE_ID: then
    every command sent before and after the kill has reached its peer at least once (duplicates
    counted and printed) and nothing is dead-lettered."""
    bootstrap = kafka_cluster.bootstrap
    names = ("a", "b")
    edge_ids = {name: f"{kafka_topic_prefix}-{name}" for name in names}
    presence_topic = f"{kafka_topic_prefix}-presence"

    def env(name: str) -> dict[str, str]:
        return {
            "EDGE_ID": edge_ids[name],
            "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
            "GRPC_USE_TLS": "false",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC_REPLICATION_FACTOR": "auto",
            "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": f"{kafka_topic_prefix}-lifecycle",
            "KAFKA_PEER_PRESENCE_TOPIC": presence_topic,
            "KAFKA_PEER_CATALOG_UPDATES_TOPIC": f"{kafka_topic_prefix}-catalog",
            "KAFKA_FILE_HASH_RESPONSES_TOPIC": f"{kafka_topic_prefix}-hash",
            "PEER_REGISTRATION_RATE_PER_ADDRESS": "0",  # every test peer comes from 127.0.0.1
            "LOG_LEVEL": "info",
        }

    async def start(nursery: trio.Nursery, name: str) -> EdgeProcess:
        edge = await EdgeProcess.start(nursery, "run", env=env(name), cwd=tmp_path)
        ports[name] = (await edge.wait_event("edge_started", timeout=60))["port"]
        await edge.wait_event("presence_caught_up", timeout=60)
        await edge.wait_event("kafka_partitions_assigned", timeout=60)
        return edge

    sent: list[tuple[str, str]] = []  # (peer id, request id)
    figures: dict[str, Any] = {}

    async def send(phase: str) -> None:
        """One command per peer through each edge's topic, addressed by peer id only."""
        for name in names:
            batch = [(p.peer_id, f"{phase}-{name}-{p.peer_id}") for p in peers]
            await produce_records(
                bootstrap, f"edge-commands-{edge_ids[name]}", [(pid, command(pid, rid)) for pid, rid in batch],
                idempotent=True, timeout=60,
            )
            sent.extend(batch)

    async def until(condition: Any, timeout: float) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await trio.sleep(0.1)

    def delivered() -> bool:
        by_peer = {p.peer_id: p for p in peers}
        return all(by_peer[pid].commands[rid] > 0 for pid, rid in sent)

    ports: dict[str, int] = {}
    peers: list[RoamingPeer] = []
    began = time.monotonic()
    async with trio.open_nursery() as nursery:
        edges = {name: await start(nursery, name) for name in names}
        try:
            peers = [
                RoamingPeer(f"{kafka_topic_prefix}-{name}{i}", ports, name) for name in names for i in range(EDGE_PEERS)
            ]
            for peer in peers:
                nursery.start_soon(peer.run)
            await until(lambda: all(p.sessions for p in peers), 60)
            await send("before")
            await until(delivered, 60)
            before = await presence_view(bootstrap, presence_topic)
            assert {pid: v["edge_id"] for pid, v in before.items()} == {p.peer_id: edge_ids[p.edge] for p in peers}
            await send("at-kill")  # A is killed with these in flight
            edges["a"].kill()
            killed = time.monotonic()
            await edges["a"].wait_exit(timeout=30)
            del ports["a"]  # A is gone: peers come back on B
            moved = [p for p in peers if p.sessions[0] == "a"]
            await until(lambda: all(p.sessions[-1] == "b" and len(p.sessions) > 1 for p in moved), 60)
            figures["reregistered_on_b_sec"] = round(time.monotonic() - killed, 2)
            with trio.fail_after(60):
                while True:
                    view = await presence_view(bootstrap, presence_topic)
                    if all(
                        view[p.peer_id]["edge_id"] == edge_ids["b"]
                        and view[p.peer_id]["event_type"] == "connected"
                        for p in peers
                    ):
                        break
            figures["presence_converged_sec"] = round(time.monotonic() - killed, 2)
            on_b = {e["peer_id"]: e["epoch"] for e in edges["b"].events if e.get("event") == "peer_connected"}
            for p in moved:  # B numbered the new session above A's, and says so in its own log
                assert view[p.peer_id]["epoch"] == on_b[p.peer_id] > before[p.peer_id]["epoch"]
            for p in peers:
                assert view[p.peer_id]["epoch"] >= before[p.peer_id]["epoch"]
            await send("after-kill")
            await trio.sleep(1)  # B reads these while A is down
            edges["a"] = await start(nursery, "a")  # the same EDGE_ID: A drains its own topic
            figures["a_restarted_after_sec"] = round(time.monotonic() - killed, 2)
            await until(delivered, 60)
            figures["all_delivered_after_sec"] = round(time.monotonic() - killed, 2)
            figures["dead_letters"] = sum(
                [await dead_letters(bootstrap, f"edge-commands-{edge_ids[name]}.deadletter") for name in names]
            )
        finally:
            for edge in edges.values():
                edge.kill()
            nursery.cancel_scope.cancel()
    counts = collections.Counter({rid: p.commands[rid] for p in peers for _pid, rid in sent if _pid == p.peer_id})
    figures.update(
        commands_sent=len(sent),
        commands_delivered=sum(1 for n in counts.values() if n),
        commands_duplicated=sum(n - 1 for n in counts.values() if n > 1),
        # which (phase, topic) the duplicates were sent in: "at-kill-a" = at the kill, through A's topic
        duplicated_by_phase=dict(collections.Counter(rid.removesuffix(f"-{pid}") for pid, rid in sent if counts[rid] > 1)),
        events_sent=sum(p.events_sent for p in peers),
        seconds=round(time.monotonic() - began, 1),
    )
    with capsys.disabled():
        print("\n# edge SIGKILL: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    assert figures["commands_delivered"] == len(sent) == 3 * len(names) * len(peers)
    assert figures["dead_letters"] == 0
