"""A 3-node Apache Kafka cluster (KRaft) for tests that claim behaviour across broker failures.

`KafkaCluster` runs N (default 3) combined broker+controller nodes of the same jars as the single
test broker (testing/kafka/broker.py), on free loopback ports, each in its own work directory under one
cluster directory: a controller quorum of N voters, internal and default topics with replication
factor 3 and min.insync.replicas 2. Each node can be stopped (SIGTERM), killed (SIGKILL) and started
again on the same ports and data; the quorum and the partitions survive one node down.

Combined nodes, not 3 controllers + 3 brokers: three JVMs start sooner than six on a small machine,
and with three voters one node down still leaves a quorum of two.

    with KafkaCluster.create() as cluster:     # started; all N brokers registered
        cluster.bootstrap                       # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
        cluster.kill(2); cluster.start_node(2)  # node ids are 1..N

Command line: `python -m testing.kafka.cluster [--nodes 3]` runs one in the foreground and prints its
bootstrap list.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import attrs

from edge.broker_probe import KafkaProbeError
from testing.kafka.broker import (
    JVM_OPTIONS,
    PROBE_INTERVAL_SEC,
    START_TIMEOUT_SEC,
    BrokerError,
    KafkaBroker,
    free_port,
    new_cluster_id,
    probe,
)

NODES: Final = 3
REPLICAS: Final = 3
#: Three JVMs on a 2-core machine: a smaller heap than the single broker's, the same C1-only JIT.
CLUSTER_JVM_OPTIONS: Final = tuple(o for o in JVM_OPTIONS if not o.startswith(("-Xms", "-Xmx"))) + (
    "-Xms64m",
    "-Xmx256m",
)


@attrs.define(eq=False)
class KafkaCluster:
    """N KRaft nodes (broker and controller each) sharing one cluster id and one quorum."""

    nodes: dict[int, KafkaBroker]
    work_dir: Path
    owns_work_dir: bool
    #: Seconds from spawning every node to all N brokers listed in Metadata, for the last start().
    startup_seconds: float | None = attrs.field(default=None, init=False)

    @classmethod
    def create(
        cls, *, nodes: int = NODES, work_dir: Path | str | None = None, host: str = "127.0.0.1"
    ) -> KafkaCluster:
        """Fetch jars if needed, pick ports, write every node's config and format its storage. Not started."""
        if work_dir is None:
            directory, owned = Path(tempfile.mkdtemp(prefix="edge-kafka-cluster-")), True
        else:
            directory, owned = Path(work_dir), False
            directory.mkdir(parents=True, exist_ok=True)
        ports: set[int] = set()

        def fresh() -> int:
            while (port := free_port(host)) in ports:
                pass
            ports.add(port)
            return port

        plan = {node_id: (fresh(), fresh()) for node_id in range(1, nodes + 1)}
        voters = ",".join(f"{node_id}@{host}:{controller}" for node_id, (_, controller) in plan.items())
        cluster_id = new_cluster_id()
        cluster = cls({}, directory, owned)
        made = False
        try:
            for node_id, (port, controller) in plan.items():
                cluster.nodes[node_id] = KafkaBroker.create(
                    work_dir=directory / f"node-{node_id}",
                    host=host,
                    port=port,
                    controller_port=controller,
                    node_id=node_id,
                    voters=voters,
                    replicas=min(REPLICAS, nodes),
                    cluster_id=cluster_id,
                    jvm_options=CLUSTER_JVM_OPTIONS,
                )
            made = True
        finally:
            if not made:
                cluster.close()
        return cluster

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated: what KAFKA_BOOTSTRAP_SERVERS takes."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    @property
    def persistent(self) -> bool:
        return True

    @property
    def running(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if node.is_running]

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id]

    def start(self, timeout: float = START_TIMEOUT_SEC) -> float:
        """Start every node that is not running, at once; wait until all N brokers are registered."""
        began = time.monotonic()
        waiting = [node for node in self.nodes.values() if not node.is_running]
        for node in waiting:
            node.spawn()
        for node in waiting:
            node.wait_ready(max(1.0, began + timeout - time.monotonic()))
        self.wait_brokers(len(self.nodes), began + timeout)
        self.startup_seconds = time.monotonic() - began
        return self.startup_seconds

    def start_node(self, node_id: int, timeout: float = START_TIMEOUT_SEC) -> float:
        """Start one node again; wait until it answers and is registered. The seconds it took."""
        node = self.nodes[node_id]
        node.spawn()
        node.wait_ready(timeout)
        self.wait_brokers(len(self.running), time.monotonic() + timeout)
        return time.monotonic() - node.spawned_at

    def stop_node(self, node_id: int) -> None:
        """SIGTERM one node and wait for its clean shutdown (it hands its partition leadership over)."""
        self.nodes[node_id].stop()

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: no flush, no leadership hand-over, no deregistration."""
        self.nodes[node_id].kill()

    def wait_brokers(self, count: int, deadline: float) -> None:
        """Poll the running nodes' Metadata until it lists `count` brokers (or raise BrokerError)."""
        problem = "no node running"
        while True:
            for node in [self.nodes[i] for i in self.running]:
                try:
                    brokers = probe(node.host, node.port, timeout=2.0)
                except (OSError, KafkaProbeError) as error:
                    problem = f"{node.bootstrap}: {type(error).__name__}: {error}"
                    continue
                if len(brokers) >= count:
                    return
                problem = f"{node.bootstrap} lists {len(brokers)} of {count} brokers"
            if time.monotonic() >= deadline:
                raise BrokerError(f"cluster not ready in time ({problem})")
            time.sleep(PROBE_INTERVAL_SEC)

    def close(self) -> None:
        """Kill every node and remove the cluster directory if this made it.

        Killed, not stopped: the last node of a quorum cannot shut down cleanly once the others are gone
        and would wait out the 30 s stop timeout; a kept directory recovers its logs on the next start."""
        for node in self.nodes.values():
            node.kill()
        if self.owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        if len(self.running) < len(self.nodes):
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testing.kafka.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=NODES)
    parser.add_argument("--dir", default=None, help="work/data directory to keep (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        cluster = KafkaCluster.create(nodes=args.nodes, work_dir=args.dir)
    except BrokerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, interrupt)
    try:
        seconds = cluster.start()
        print(cluster.bootstrap, flush=True)
        print(f"# {args.nodes} nodes ready in {seconds:.2f} s; Ctrl-C stops them", file=sys.stderr, flush=True)
        while cluster.running:
            time.sleep(1.0)
        return 1  # every node exited on its own
    except KeyboardInterrupt:
        return 0
    except BrokerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
