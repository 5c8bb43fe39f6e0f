"""Start-up topic check against the real broker: create what is missing, or refuse to run."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio_asyncio

from edge.kafka.topics import TopicsMissing, ensure_topics, missing_topics, replication_factor, required_topics
from testing.kafka.client import create_topics, describe_partitions, topic_partitions
from testing.process import EdgeProcess
from testing.settings import edge_settings


def test_required_topics_cover_everything_the_edge_reads_and_writes(tls_files):
    settings = edge_settings("e7", "k:9092", tls_files, True)
    names = required_topics(settings)
    assert names[0] == "edge-commands-e7" and "edge-commands-e7.deadletter" in names
    assert set(settings.produced_topics()) <= set(names) and len(names) == len(set(names)) == 9
    assert missing_topics(["edge-commands-e7", "other"], ["edge-commands-e7", "e7-lifecycle"]) == ["e7-lifecycle"]


@pytest.mark.kafka
async def test_missing_topics_are_created_with_the_configured_partitions(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    settings = edge_settings(
        kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence, kafka_topic_partitions=2
    )
    await create_topics(kafka_bootstrap, [settings.kafka_peer_catalog_updates_topic], partitions=5)
    async with trio_asyncio.open_loop():
        created = await ensure_topics(settings, timeout=30)
        assert set(created) == set(required_topics(settings)) - {settings.kafka_peer_catalog_updates_topic}
        assert await ensure_topics(settings, timeout=30) == []  # all there now
    assert await topic_partitions(kafka_bootstrap, settings.commands_topic) == [0, 1]
    assert await topic_partitions(kafka_bootstrap, settings.deadletter_topic) == [0, 1]
    # An existing topic is left as it is.
    assert await topic_partitions(kafka_bootstrap, settings.kafka_peer_catalog_updates_topic) == [0, 1, 2, 3, 4]


@pytest.mark.kafka
async def test_missing_topics_without_creation_stop_the_edge_with_exit_code_2(
    kafka_bootstrap, kafka_topic_prefix, tls_files, tmp_path: Path
):
    """KAFKA_CREATE_TOPICS=false and topics missing: one plain line naming them, exit code 2, no peer
    port ever opened."""
    env = {
        "EDGE_ID": kafka_topic_prefix,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_CREATE_TOPICS": "false",
        "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
        "GRPC_CERT_PATH": str(tls_files.cert_path),
        "GRPC_KEY_PATH": str(tls_files.key_path),
    }
    async with trio.open_nursery() as nursery:
        process = await EdgeProcess.start(nursery, "run", env=env, cwd=tmp_path)
        try:
            assert await process.wait_exit(60) == 2
        finally:
            process.kill()
    await trio.lowlevel.checkpoint()  # let the log reader take the last lines
    [line] = [e["line"] for e in process.events if e.get("event") == "unparsed" and e["line"]]
    assert line.startswith("edge: configuration error: KAFKA_CREATE_TOPICS: expected true, or these topics")
    assert f"edge-commands-{kafka_topic_prefix}" in line and f"edge-commands-{kafka_topic_prefix}.deadletter" in line
    assert not [e for e in process.events if e.get("event") == "edge_started"]


def test_topics_missing_is_a_config_error():
    error = TopicsMissing(["b", "a"])
    assert error.variable == "KAFKA_CREATE_TOPICS" and error.missing == ["a", "b"]


def test_replication_factor_auto_is_min_of_three_and_the_brokers():
    assert [replication_factor(0, brokers) for brokers in (0, 1, 2, 3, 5)] == [1, 1, 2, 3, 3]
    assert replication_factor(2, 5) == 2 and replication_factor(4, 1) == 4  # a number is taken as it is


@pytest.mark.kafka
async def test_auto_replication_on_one_broker_creates_topics_with_one_replica(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """KAFKA_TOPIC_REPLICATION_FACTOR=auto on a single broker: one replica (3 on the 3-node cluster,
    tests/test_kafka_cluster.py)."""
    settings = edge_settings(
        kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence, kafka_topic_replication_factor=0
    )
    async with trio_asyncio.open_loop():
        created = await ensure_topics(settings, timeout=30)
    assert {len(p.replicas) for p in await describe_partitions(kafka_bootstrap, created)} == {1}
