"""A running edge for tests: `edge.serve` itself, in a cancel scope of its own, stopped (drained) when
the block ends or when the test says so.

    async with running_edge(settings) as edge:                           # the real Kafka bridge
    async with running_edge(settings, bridge=MemoryBridge()) as edge:    # no Kafka: what the edge
                                                                         # publishes stays in memory

`edge.port`, `edge.registry`, `edge.runtime` and `edge.stats` come from the `edge.Started` that `serve`
reports; `await edge.stop()` drains the edge as a cancelled embedding would, and returns once `serve` has.

`MemoryBridge` takes the Kafka bridge's place for tests that claim gRPC or peer behaviour, and for timed
tests under MockClock, where Kafka, which runs on the real clock, cannot be.

`running_server(config, routes)` is the same for the gRPC transport alone (`serve_grpc` with the test's
own handlers): `server.port`, `server.stats`, `server.metrics` (from `server_metrics()`, which transport
tests that serve a connection themselves use too), `await server.stop()`.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry

import edge
from edge.grpc import GrpcServerConfig, GrpcServerStats, Handler, serve_grpc
from edge.ops.grpc_metrics import GrpcServerMetrics
from edge.ops.readiness import KafkaState
from edge.ops.runtime import EdgeRuntime
from edge.peers.registry import PeerRegistry
from edge.handoff import EventReceiver, EventSender
from edge.records import OutboundRecord

#: Seconds `stop()` may take, the whole drain included.
STOP_DEADLINE_SEC = 60


@attrs.define(eq=False)
class Stoppable:
    """A serve function's own cancel scope, and an event set once the function has returned."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    stopped: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, serve: Callable[..., Awaitable[None]], *args: Any, task_status: trio.TaskStatus[Any]) -> None:
        try:
            with self.scope:
                await serve(*args, task_status=task_status)
        finally:
            self.stopped.set()

    async def stop(self) -> None:
        """Cancel the serve function (its graceful shutdown) and wait until it has returned."""
        self.scope.cancel()
        with trio.fail_after(STOP_DEADLINE_SEC):
            await self.stopped.wait()


@contextlib.asynccontextmanager
async def stoppable(serve: Callable[..., Awaitable[None]], *args: Any) -> AsyncIterator[tuple[Any, Stoppable]]:
    """Start `serve(*args, task_status=...)` in its own scope; yields what it reported and the handle
    that stops it. Stopped (shielded, under STOP_DEADLINE_SEC) when the block ends."""
    handle = Stoppable()
    async with trio.open_nursery() as nursery:
        value = await nursery.start(partial(handle.run, serve, *args))
        try:
            yield value, handle
        finally:
            with trio.CancelScope(shield=True):
                await handle.stop()


@attrs.define(eq=False)
class RunningEdge:
    started: edge.Started
    handle: Stoppable
    #: The MemoryBridge in the Kafka bridge's place, if one was given.
    bridge: MemoryBridge | None = None

    @property
    def port(self) -> int:
        return self.started.grpc_port

    @property
    def registry(self) -> PeerRegistry:
        return self.started.registry

    @property
    def runtime(self) -> EdgeRuntime:
        return self.started.runtime

    @property
    def stats(self) -> GrpcServerStats:
        """The gRPC transport's live counters (connections, streams, statuses)."""
        return self.started.runtime.grpc_stats

    @property
    def kafka(self) -> KafkaState:
        return self.started.runtime.health.kafka

    async def caught_up(self, timeout: float = 60) -> None:
        """Wait until the presence view has read the presence topic to its end (part of readiness)."""
        with trio.fail_after(timeout):
            while not self.kafka.presence_caught_up:
                await self.kafka.changed.wait()

    def refused(self, cause: str) -> float:
        """`giggityflix_edge_registrations_refused_total{cause}` so far."""
        value = self.runtime.metrics.registry.get_sample_value(
            "giggityflix_edge_registrations_refused_total", {"cause": cause}
        )
        return value or 0.0

    async def stop(self) -> None:
        """Drain the edge (every session ends with `shutdown`) and wait until `serve` has returned."""
        await self.handle.stop()

    async def registered(self) -> int:
        """Sessions in the registry once every ended one has left it (an ended session leaves when
        its `disconnected` is queued, a moment after its stream closed)."""
        with trio.fail_after(10):
            for session in self.registry.sessions():
                if session.end_reason is not None:
                    await session.ended.wait()
        return len(self.registry)


@contextlib.asynccontextmanager
async def running_edge(
    settings: edge.Settings, *, bridge: MemoryBridge | None = None, now: Callable[[], Any] | None = None
) -> AsyncIterator[RunningEdge]:
    """`edge.serve(settings)`, with `bridge` in the Kafka bridge's place if given, and `now` as its wall
    clock if given; stopped when the block ends."""
    serve: Callable[..., Awaitable[None]] = edge.serve if bridge is None else partial(edge.serve, bridge=bridge)
    if now is not None:
        serve = partial(serve, now=now)
    async with stoppable(serve, settings) as (started, handle):
        yield RunningEdge(started, handle, bridge)


# ----------------------------------------------------------------------------- the transport alone


def server_metrics() -> GrpcServerMetrics:
    """The transport's metrics in a registry of their own; test routes are labelled from their paths."""
    return GrpcServerMetrics.create(CollectorRegistry(), methods={})


@attrs.define(eq=False)
class RunningServer:
    """`serve_grpc` with the test's own routes (the transport without the edge), for transport tests."""

    port: int
    stats: GrpcServerStats
    metrics: GrpcServerMetrics
    handle: Stoppable

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Cancel serve_grpc (graceful shutdown) and wait until it has returned."""
        await self.handle.stop()


@contextlib.asynccontextmanager
async def running_server(config: GrpcServerConfig, routes: Mapping[str, Handler]) -> AsyncIterator[RunningServer]:
    """serve_grpc in its own cancel scope; stopped (gracefully) when the block ends."""
    stats = GrpcServerStats()
    metrics = server_metrics()
    async with stoppable(partial(serve_grpc, metrics=metrics, stats=stats), config, routes) as (port, handle):
        yield RunningServer(port, stats, metrics, handle)


# ------------------------------------------------------------------------------- in-memory bridge


@attrs.frozen
class Published:
    """A record as the bridge received it, and the Trio time it was taken."""

    at: float
    record: OutboundRecord

    @property
    def value(self) -> dict[str, Any]:
        return dict(self.record.value)


@attrs.define(eq=False)
class MemoryBridge:
    """An in-memory Kafka bridge, with `edge.serve`'s bridge signature.

    Reports itself connected, keeps what it would produce in `published`, and, like the real one, keeps
    draining after cancellation until the peer side closes the channel, for at most
    SHUTDOWN_TIMEOUT_SEC; with `stalled` set it takes nothing (a Kafka that accepts nothing) until
    `resume()`; with `pace`, it takes one record per `pace` seconds (a Kafka slower than the peers)."""

    stalled: bool = False
    pace: float | None = None
    #: Records for this topic (the lifecycle records' presence twins) go to `presence`, not `published`.
    presence_topic: str = "peer-presence"
    published: list[Published] = attrs.field(factory=list)
    presence: list[OutboundRecord] = attrs.field(factory=list)
    #: Records taken so far, by key (cheap to check on every record, unlike scanning `published`).
    counts: collections.Counter[str | None] = attrs.field(factory=collections.Counter)
    closed_at: float | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _resumed: trio.Event = attrs.field(factory=trio.Event)

    def stall(self) -> None:
        """Take nothing more (after the record being taken, if any) until `resume()`."""
        self.stalled = True
        self._resumed = trio.Event()

    def resume(self) -> None:
        """A stalled bridge starts taking records (Kafka is back)."""
        self.stalled = False
        self._resumed.set()

    async def __call__(
        self,
        settings: edge.Settings,
        events: EventReceiver,
        dead_letters: EventSender,
        registry: PeerRegistry,
        kafka: KafkaState,
        *,
        now: object = None,
        metrics: object = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await dead_letters.aclose()  # no commands here, so no dead letters
        self.presence_topic = settings.kafka_peer_presence_topic
        kafka.consumer_enabled = False
        kafka.set_producer(True)
        task_status.started()
        async with events:
            try:
                await self.drain(events)
            finally:
                with trio.move_on_after(settings.shutdown_timeout_sec, shield=True):
                    await self.drain(events)
                kafka.set_producer(False)
                self.closed_at = trio.current_time()

    async def drain(self, events: EventReceiver) -> None:
        """Take every record until the channel is closed (none at all while `stalled`)."""
        while True:
            if self.stalled:
                await self._resumed.wait()
            try:
                record = await events.receive()
            except trio.EndOfChannel:
                return
            events.release([record])  # "produced" at once
            if record.topic == self.presence_topic:
                self.presence.append(record)
            else:
                self._keep(record)
            if self.pace is not None:
                await trio.sleep(self.pace)

    async def take(self, events: EventReceiver) -> Published:
        """Take just the next record (presence twins aside)."""
        record = await events.receive()
        events.release([record])
        while record.topic == self.presence_topic:
            self.presence.append(record)
            record = await events.receive()
            events.release([record])
        return self._keep(record)

    def _keep(self, record: OutboundRecord) -> Published:
        published = Published(trio.current_time(), record)
        self.published.append(published)
        self.counts[record.key] += 1
        event, self._changed = self._changed, trio.Event()
        event.set()
        return published

    def records(self, topic: str | None = None, event_type: str | None = None) -> list[OutboundRecord]:
        return [
            item.record
            for item in self.published
            if (topic is None or item.record.topic == topic)
            and (event_type is None or item.record.value.get("event_type") == event_type)
        ]

    def lifecycle(self) -> list[tuple[str, str, str | None]]:
        """(peer_id, event_type, reason) of every lifecycle record, in order."""
        return [
            (r.value["peer_id"], r.value["event_type"], r.value.get("reason"))
            for r in self.records()
            if "event_type" in r.value
        ]

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float | None = 30, poll: float | None = None
    ) -> None:
        """Until `predicate()` holds, under `timeout` (None: the caller's deadline): woken by every
        record, and every `poll` seconds if given (for state outside the bridge; not under MockClock,
        where each poll would move the clock)."""
        with trio.fail_after(math.inf if timeout is None else timeout):
            while not predicate():
                if poll is None:
                    await self._changed.wait()
                else:
                    with trio.move_on_after(poll):
                        await self._changed.wait()

