"""What every scenario shares: the broker, the certificates, the cores, edges and load processes.

Cores: the orchestrator pins itself to the load cores first, so the Kafka broker, the load
generators, the raw Kafka clients' broker side and py-spy inherit them; the edge and the bare
servers standing in for it are started pinned to the edge cores. On a 2-core machine that is one
core for the edge and one for everything else.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from bench.control import Child
from bench.edgeproc import EdgeProcess
from bench.kafka import BenchKafka
from bench.machine import CpuPlan
from testing.kafka.broker import JVM_OPTIONS, KafkaBroker

#: The test broker runs the C1 compiler only, to start quickly; a benchmark wants the full JIT.
BENCH_JVM_OPTIONS = tuple(o for o in JVM_OPTIONS if not o.startswith(("-XX:TieredStopAtLevel", "-Xmx"))) + ("-Xmx1g",)


#: The programs `Bench.start_edge` can start (`python -m ...`): the edge, and the stack a user would pick instead.
IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {"edge": ("edge", "run"), "grpcaio": ("bench.aio_edge",)}


class BenchBroker(KafkaBroker):
    """The tests' single-node Apache Kafka broker, with the JVM tuned for throughput."""

    def _java(self, main_class: str, *args: str) -> list[str]:
        command = super()._java(main_class, *args)
        return [command[0], *BENCH_JVM_OPTIONS, *command[1 + len(JVM_OPTIONS) :]]


@contextlib.contextmanager
def bench_bootstrap(given: str | None) -> Iterator[tuple[str, int | None]]:
    """The broker a run uses: `given` (host:port), or a BenchBroker started here and closed on exit.

    Yields the bootstrap address and the started broker's pid (None for a given broker)."""
    if given:
        yield given, None
        return
    broker = BenchBroker.create()
    broker.start()
    try:
        yield broker.bootstrap, broker.pid
    finally:
        broker.close()


def raise_fd_limit() -> int:
    """Raise this process's (and so its children's) open-file limit to the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@attrs.frozen
class Topics:
    """The topics of one edge under test; every one gets broker (LogAppendTime) timestamps."""

    edge_id: str

    @property
    def lifecycle(self) -> str:
        return f"{self.edge_id}.lifecycle"

    @property
    def catalog(self) -> str:
        return f"{self.edge_id}.catalog"

    @property
    def file_hash(self) -> str:
        return f"{self.edge_id}.file-hash"

    @property
    def commands(self) -> str:
        return f"edge-commands-{self.edge_id}"

    @property
    def deadletter(self) -> str:
        return f"edge-commands-{self.edge_id}.deadletter"

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": self.lifecycle,
            "KAFKA_PEER_CATALOG_UPDATES_TOPIC": self.catalog,
            "KAFKA_FILE_HASH_RESPONSES_TOPIC": self.file_hash,
            "KAFKA_FILE_DELETE_RESPONSES_TOPIC": f"{self.edge_id}.file-delete",
            "KAFKA_SCREENSHOT_CAPTURE_RESPONSES_TOPIC": f"{self.edge_id}.screenshot",
            "KAFKA_FILE_REMAP_RESPONSES_TOPIC": f"{self.edge_id}.file-remap",
            "KAFKA_PEER_PRESENCE_TOPIC": f"{self.edge_id}.presence",
        }

    def all(self) -> list[str]:
        return [*self.env().values(), self.commands, self.deadletter]


@attrs.define
class Load:
    """Load generator processes sharing the peers of one scenario between them."""

    children: list[Child]
    prefix: str = ""
    peers: int = 0

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def peer_ids(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.peers)]

    async def each(self, op: str, arguments: Sequence[dict[str, Any]], timeout: float = 900) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = [{} for _ in self.children]

        async def one(index: int) -> None:
            replies[index] = await self.children[index].call(op, timeout=timeout, **arguments[index])

        async with trio.open_nursery() as nursery:
            for index in range(len(self.children)):
                nursery.start_soon(one, index)
        return replies

    def _split(self, total: float) -> list[float]:
        n = len(self.children)
        return [total / n] * n

    async def connect(self, prefix: str, count: int, *, catalog: int, concurrency: int, heartbeat_sec: float) -> dict[str, Any]:
        """Open peers `prefix`+N for the next `count` N (continuing from earlier calls)."""
        self.prefix = prefix
        n = len(self.children)
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        starts = list(itertools.accumulate([self.peers, *shares[:-1]]))
        self.peers += count
        replies = await self.each(
            "connect",
            [dict(prefix=prefix, start=s, count=c, catalog=catalog, concurrency=max(1, concurrency // n),
                  heartbeat_sec=heartbeat_sec) for s, c in zip(starts, shares, strict=True)],
        )
        errors: dict[str, int] = {}
        for reply in replies:
            for error, times in reply["errors"].items():
                errors[error] = errors.get(error, 0) + times
        began, ended = min(r["began_ns"] for r in replies), max(r["ended_ns"] for r in replies)
        connected = sum(r["connected"] for r in replies)
        return {"connected": connected, "errors": errors, "seconds": (ended - began) / 1e9,
                "rate": connected / ((ended - began) / 1e9)}

    async def send(self, rate: float, duration: float) -> dict[str, Any]:
        replies = await self.each("send", [dict(rate=r, duration=duration) for r in self._split(rate)])
        return {
            "sent": sum(r["sent"] for r in replies),
            "seconds": (max(r["ended_ns"] for r in replies) - min(r["began_ns"] for r in replies)) / 1e9,
            "ended_ns": max(r["ended_ns"] for r in replies),
            "load_cpu_seconds": sum(r["cpu_seconds"] for r in replies),
            "peers_failed": sum(r["peers_failed"] for r in replies),
        }

    async def reset(self, count: int, rate: float) -> dict[str, int]:
        n = len(self.children)
        replies = await self.each("reset", [dict(count=count // n, rate=rate / n)] * n)
        return {peer: ns for r in replies for peer, ns in r["resets"].items()}

    async def commands(self) -> list[tuple[str, int]]:
        replies = await self.each("commands", [{}] * len(self.children))
        return [tuple(c) for r in replies for c in r["commands"]]  # type: ignore[misc]

    async def stats(self) -> dict[str, int]:
        replies = await self.each("stats", [{}] * len(self.children))
        return {k: sum(r[k] for r in replies) for k in ("peers", "open", "heartbeats_sent", "heartbeats_received", "commands")}

    async def wait_ended(self, timeout: float) -> dict[str, int]:
        replies = await self.each("wait_ended", [dict(within=timeout)] * len(self.children))
        reasons: dict[str, int] = {}
        for reply in replies:
            for reason, times in reply["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + times
        return reasons

    async def leave(self) -> dict[str, int]:
        """Every peer leaves; the next `connect` numbers peers from 0 again."""
        replies = await self.each("leave", [{}] * len(self.children))
        self.peers = 0
        reasons: dict[str, int] = {}
        for reply in replies:
            for reason, times in reply["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + times
        return reasons

    async def stop(self) -> None:
        async with trio.open_nursery() as nursery:
            for child in self.children:
                nursery.start_soon(child.stop)


@attrs.define
class Bench:
    """One run: where results go, which cores, the broker, the certificates, the profiler."""

    nursery: trio.Nursery
    kafka: BenchKafka
    certs: Path
    cpus: CpuPlan
    out: Path
    load_procs: int
    profile: str | None = None
    broker_pid: int | None = None
    #: Raw-limit measurements made so far in this run, by name (each is made once per run).
    raw: dict[str, Any] = attrs.field(factory=dict)
    #: What `start_edge` starts: one of IMPLEMENTATIONS (bench.compare runs each scenario under both).
    implementation: str = "edge"

    async def start_edge(self, scenario: str, **settings: Any) -> tuple[EdgeProcess, Topics]:
        """The edge under test, or under `implementation = "grpcaio"` the grpc.aio stack (bench.aio_edge)."""
        if self.implementation != "edge":
            scenario = f"{scenario}-{self.implementation}"
        topics = Topics(f"bench-{scenario}-{uuid.uuid4().hex[:6]}")
        await self.kafka.create_topics(topics.all())
        env = {
            "EDGE_ID": topics.edge_id,
            "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
            # A free port: a fixed one (the default 8080) may be held by another process on the machine.
            "HEALTH_HTTP_ADDRESS": "127.0.0.1:0",
            "GRPC_CERT_PATH": str(self.certs / "server.crt"),
            "GRPC_KEY_PATH": str(self.certs / "server.key"),
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "KAFKA_GROUP_ID": topics.edge_id,
            "LOG_LEVEL": "info",
            **topics.env(),
            **{name.upper(): str(value) for name, value in settings.items()},
        }
        profile_path = None
        if self.profile:
            profile_path = self.out / f"{scenario}.{'speedscope.json' if self.profile == 'py-spy' else 'html'}"
        edge = await EdgeProcess.start(
            self.nursery, env, cpus=self.cpus.edge, log_path=self.out / f"{scenario}.edge.log",
            profile=self.profile, profile_path=profile_path, module=IMPLEMENTATIONS[self.implementation],
        )
        return edge, topics

    async def start_load(self, name: str, port: int) -> Load:
        if self.implementation != "edge":
            name = f"{name}-{self.implementation}"
        children = [
            await Child.start(
                "bench.loadgen", ["127.0.0.1", str(port), str(self.certs / "ca.crt")],
                name=f"loadgen {i}", cpus=self.cpus.load, log_path=self.out / f"{name}.loadgen{i}.log",
            )
            for i in range(self.load_procs)
        ]
        return Load(children)

    async def start_bare(self, name: str, mode: str) -> tuple[Child, int]:
        """A bare purerpc server (bench.raw_grpc) on the edge cores, and its port."""
        child = await Child.start(
            "bench.raw_grpc", [str(self.certs / "server.crt"), str(self.certs / "server.key"), "--mode", mode],
            name=f"bare purerpc ({mode})", cpus=self.cpus.edge, log_path=self.out / f"{name}.log",
        )
        return child, int((await child.hello())["port"])
