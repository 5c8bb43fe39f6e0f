"""Commands in, against a real Kafka broker, with real grpcio peers over TLS.

Rules: these tests run on the real clock (docs/design.md#mock-clock-real-io) and wait only for conditions
under deadlines. Each test has its own edge id, so its own topics and consumer group. Commands are produced
with the test harness's own aiokafka producer, dead letters read back with its consumer.
"""

from __future__ import annotations

import datetime
import json

import pytest
import structlog
import trio
import trio_asyncio
from aiokafka import AIOKafkaConsumer

import edge
from edge.proto import pb
from testing.kafka.client import consume_records, create_topics, produce_records, wait_until_committed
from testing.settings import edge_settings
from tests.kafka.support import Collector, command

pytestmark = pytest.mark.kafka


async def test_each_command_type_reaches_a_connected_peer(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """The five command types of docs/protocol.md#commands arrive as the EdgeMessages of
    docs/protocol.md#messages."""
    settings = edge_settings(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    commands = [
        ("file_delete", {"catalog_uuids": ["c1", "c2"]}),
        ("file_hash", {"catalog_uuid": "c1", "hash_types": ["sha256"]}),
        ("file_remap", {"old_catalog_uuid": "c1", "new_catalog_uuid": "c9"}),
        ("screenshot_capture", {"catalog_uuid": "c1", "quantity": 2, "upload_token": "t", "upload_endpoint": "https://u"}),
        ("batch_file_offer_response", {"files": [{"peer_luid": "l1", "catalog_uuid": "c1"}]}),
    ]
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(edge.serve, settings)).grpc_port
        peer = await Collector.connect(nursery, "peer-a", port, tls_files.ca_pem)
        try:
            records = [("peer-a", command("peer-a", f"r-{kind}", kind, data)) for kind, data in commands]
            records.append(("peer-a", json.dumps({"peer_id": "peer-a", "command_type": "file_delete", "command_data": {"catalog_uuids": []}}).encode()))
            await produce_records(kafka_bootstrap, settings.commands_topic, records)
            await peer.wait_for(6)
            got = peer.messages
            assert [m.WhichOneof("payload") for m in got] == [
                "file_delete_request",
                "file_hash_request",
                "file_remap_request",
                "screenshot_capture_request",
                "batch_file_offer_response",
                "file_delete_request",
            ]
            assert got[0] == pb.EdgeMessage(request_id="r-file_delete", file_delete_request=pb.FileDeleteRequest(catalog_uuids=["c1", "c2"]))
            assert got[1].file_hash_request == pb.FileHashRequest(catalog_uuid="c1", hash_types=["sha256"])
            assert got[2].file_remap_request == pb.FileRemapRequest(old_catalog_uuid="c1", new_catalog_uuid="c9")
            assert got[3].screenshot_capture_request == pb.ScreenshotCaptureRequest(
                catalog_uuid="c1", quantity=2, upload_token="t", upload_endpoint="https://u", request_id="r-screenshot_capture"
            )
            assert got[4].batch_file_offer_response.files[0] == pb.FileOfferResult(peer_luid="l1", catalog_uuid="c1")
            assert len(got[5].request_id) == 36  # generated: a UUID
        finally:
            peer.close()
        nursery.cancel_scope.cancel()


async def test_500_commands_for_10_peers_arrive_in_per_peer_topic_order(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """Interleaved commands over 3 partitions: each peer gets its 50 in the order they were produced,
    each exactly once, and the group's commit reaches the end of every partition."""
    settings = edge_settings(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    peers = [f"peer-{i}" for i in range(10)]
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(edge.serve, settings)).grpc_port
        collectors = [await Collector.connect(nursery, p, port, tls_files.ca_pem) for p in peers]
        try:
            records = [(peers[n % 10], command(peers[n % 10], f"r-{n:03d}")) for n in range(500)]
            await produce_records(kafka_bootstrap, settings.commands_topic, records)
            for collector in collectors:
                await collector.wait_for(50)
            for i, collector in enumerate(collectors):
                assert collector.request_ids == [f"r-{n:03d}" for n in range(i, 500, 10)]
            committed = await wait_until_committed(kafka_bootstrap, settings.kafka_group_id, settings.commands_topic)
            assert sum(offset for offset, _ in committed.values()) == 500
        finally:
            for collector in collectors:
                collector.close()
        nursery.cancel_scope.cancel()


async def test_each_dead_letter_reason_with_the_spec_fields(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """invalid_json, invalid_command, unknown_command_type, expired (on arrival and while held),
    peer_not_connected and delivery_failed (past RETRY_MAX_HELD_COMMANDS), each with the fields of
    docs/protocol.md#dead-letters and the source topic/partition/offset; the commit then passes all of
    them."""
    settings = edge_settings(
        kafka_topic_prefix,
        kafka_bootstrap,
        tls_files,
        kafka_supports_idempotence,
        retry_max_retries=1,
        retry_initial_delay_ms=50,
        retry_max_delay_ms=200,
        retry_max_held_commands=1,
    )
    topic = settings.commands_topic
    await create_topics(kafka_bootstrap, [topic], partitions=1)  # one partition: offsets are the order below
    now = datetime.datetime.now(datetime.timezone.utc)
    soon = (now + datetime.timedelta(seconds=3)).isoformat()
    later = (now + datetime.timedelta(seconds=120)).isoformat()
    past = (now - datetime.timedelta(seconds=1)).isoformat()
    records = [
        (None, b"this is { not json"),
        ("p", command("p", "r-bad", data={"catalog_uuids": "c1"})),
        ("p", command("p", "r-unknown", "reboot", {})),
        ("p", command("p", "r-past", expires_at=past)),
        ("ghost-a", command("ghost-a", "r-ghost")),
        ("ghost-b", command("ghost-b", "r-held", expires_at=soon)),
        ("ghost-b", command("ghost-b", "r-refused", expires_at=later)),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(edge.serve, settings)
        await produce_records(kafka_bootstrap, topic, records)
        letters = await consume_records(kafka_bootstrap, settings.deadletter_topic, count=7, timeout=60)
        await wait_until_committed(kafka_bootstrap, settings.kafka_group_id, topic)
        nursery.cancel_scope.cancel()
    by_offset = {letter.value["offset"]: letter for letter in letters}
    assert sorted(by_offset) == list(range(7))
    expected = {
        0: ("invalid_json", 0, None, "this is { not json"),
        1: ("invalid_command", 0, "p", json.loads(records[1][1])),
        2: ("unknown_command_type", 0, "p", json.loads(records[2][1])),
        3: ("expired", 0, "p", json.loads(records[3][1])),
        4: ("peer_not_connected", 2, "ghost-a", json.loads(records[4][1])),
        6: ("delivery_failed", 1, "ghost-b", json.loads(records[6][1])),
    }
    for offset, (reason, attempts, peer_id, original) in expected.items():
        letter = by_offset[offset]
        assert letter.key == peer_id
        value = letter.value
        assert (value["reason"], value["attempts"], value["peer_id"]) == (reason, attempts, peer_id), value
        assert value["original_message"] == original
        assert (value["topic"], value["partition"], value["offset"]) == (topic, 0, offset)
        assert value["edge_id"] == kafka_topic_prefix and value["timestamp"].endswith("Z")
        assert value["detail"]
        assert value.get("request_id") == (original.get("request_id") if isinstance(original, dict) else None)
    assert "command_data.catalog_uuids" in by_offset[1].value["detail"]
    assert "RETRY_MAX_HELD_COMMANDS" in by_offset[6].value["detail"]
    held = by_offset[5].value
    assert (held["reason"], held["request_id"]) == ("expired", "r-held") and held["attempts"] >= 2


async def test_poison_record_does_not_block_its_partition(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """A record that is not JSON between good ones (same partition, same key) is dead-lettered; the
    commands after it are delivered and the commit passes it."""
    settings = edge_settings(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    topic = settings.commands_topic
    records = [("peer-p", command("peer-p", f"r-{n}")) for n in range(5)]
    records.insert(2, ("peer-p", b"\x00\x01 poison, not JSON"))
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(edge.serve, settings)).grpc_port
        peer = await Collector.connect(nursery, "peer-p", port, tls_files.ca_pem)
        try:
            sent = await produce_records(kafka_bootstrap, topic, records)
            assert len({partition for partition, _ in sent}) == 1
            await peer.wait_for(5)
            assert peer.request_ids == [f"r-{n}" for n in range(5)]
            [letter] = await consume_records(kafka_bootstrap, settings.deadletter_topic, count=1)
            assert letter.value["reason"] == "invalid_json" and letter.value["offset"] == sent[2][1]
            assert letter.value["original_message"] == "\x00\x01 poison, not JSON"
            await wait_until_committed(kafka_bootstrap, settings.kafka_group_id, topic)
        finally:
            peer.close()
        nursery.cancel_scope.cancel()


async def test_peer_that_connects_during_the_retries_gets_the_command(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """The command is read while its peer is away; the peer registers during the retries and gets it."""
    settings = edge_settings(
        kafka_topic_prefix,
        kafka_bootstrap,
        tls_files,
        kafka_supports_idempotence,
        retry_max_retries=40,
        retry_initial_delay_ms=100,
        retry_max_delay_ms=300,
    )
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(edge.serve, settings)).grpc_port
            await produce_records(kafka_bootstrap, settings.commands_topic, [("late", command("late", "r-late"))])
            with trio.fail_after(30):
                while sum(1 for e in logs if e["event"] == "command_retry_scheduled") < 2:
                    await trio.sleep(0.05)
            peer = await Collector.connect(nursery, "late", port, tls_files.ca_pem)
            try:
                await peer.wait_for(1)
                assert peer.request_ids == ["r-late"]
                await wait_until_committed(kafka_bootstrap, settings.kafka_group_id, settings.commands_topic)
            finally:
                peer.close()
            nursery.cancel_scope.cancel()
    assert not [e for e in logs if e["event"] == "command_dead_lettered"]


async def test_rebalance_commits_what_is_settled_and_the_next_owner_skips_it(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """Another member joins the group mid-flow and leaves again. On revocation the edge commits what is
    settled (with the settled ranges in the commit metadata) and abandons a command it is holding for an
    absent peer; when the partitions come back it reads from the commit, skips what was delivered
    already (no duplicates), and the absent peer still gets its command when it connects. Periodic
    commits are made rare here, so what is committed comes from the revocation and, at the end, from
    the commit the consumer makes before it stops."""
    settings = edge_settings(
        kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence, kafka_commit_interval_ms=600_000
    )
    topic = settings.commands_topic
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)).isoformat()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(edge.serve, settings)).grpc_port
            online = [await Collector.connect(nursery, p, port, tls_files.ca_pem) for p in ("peer-a", "peer-b", "peer-c")]
            try:
                records = [("absent", command("absent", "r-held", expires_at=later))]
                records += [(c.peer_id, command(c.peer_id, f"{c.peer_id}/{n}")) for n in range(30) for c in online]
                await produce_records(kafka_bootstrap, topic, records)
                for collector in online:
                    await collector.wait_for(30)
                leave = trio.Event()
                nursery.start_soon(_join_group_until, kafka_bootstrap, settings.kafka_group_id, topic, leave)
                with trio.fail_after(60):
                    while not any(e["event"] == "commands_abandoned" for e in logs):
                        await trio.sleep(0.05)
                leave.set()
                with trio.fail_after(60):  # both partitions back with the edge
                    while not any(
                        e["event"] == "kafka_partitions_assigned" and len(e["partitions"]) == 2 for e in logs[-50:]
                    ):
                        await trio.sleep(0.05)
                absent = await Collector.connect(nursery, "absent", port, tls_files.ca_pem)
                await absent.wait_for(1)
                assert absent.request_ids == ["r-held"]
                for collector in online:
                    assert collector.request_ids == [f"{collector.peer_id}/{n}" for n in range(30)]
                absent.close()
            finally:
                for collector in online:
                    collector.close()
            nursery.cancel_scope.cancel()
    revoked = [e for e in logs if e["event"] == "kafka_partitions_revoked" and e["partitions"]]
    assert revoked and any(e["committed"] for e in revoked)
    assert sum(e["count"] for e in logs if e["event"] == "kafka_settled_records_skipped") > 0
    # The commit made before the consumer stopped covers everything.
    await wait_until_committed(kafka_bootstrap, settings.kafka_group_id, topic, timeout=10)


async def _join_group_until(bootstrap: str, group: str, topic: str, leave: trio.Event) -> None:
    """A second member of the group that takes partitions and reads nothing, until `leave` is set."""
    async with trio_asyncio.open_loop():
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        try:
            with trio.fail_after(60):
                await trio_asyncio.aio_as_trio(consumer.start)()
            with trio.fail_after(60):
                await leave.wait()
        finally:
            with trio.move_on_after(30, shield=True):
                await trio_asyncio.aio_as_trio(consumer.stop)()
