"""In-memory harness for the peer side under MockClock: the real `PeerStreamHandler` behind the real
transport (`serve_grpc_connection`), one `memory_stream_pair` per peer connection, a small HTTP/2 test
peer on the other end, and a `MemoryBridge` in place of the Kafka bridge (the test reads the
OutboundRecords the sessions queue, with the Trio time each was queued).

Nothing here sleeps or touches a socket, so under `autojump_clock`/`mock_clock` hours of peer life take
no wall-clock time.

Also `assert_no_secrets`, for the identity tests' captured logs.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import unquote

import h2.events
import h2.exceptions
import structlog
import trio
import trio.testing

from edge.config import Settings
from edge.grpc import GrpcServerConfig, GrpcServerStats, StatusCode, serve_grpc_connection
from edge.ops.metrics import EdgeMetrics
from edge.peers.endings import Ending, serve_endings
from edge.peers.handler import PeerStreamHandler
from edge.peers.registry import PeerRegistry
from edge.peers.server import grpc_config
from edge.proto import CONNECT_PATH, pb
from edge.handoff import open_event_channel
from edge.timers import Timers, serve_timers
from testing.harness import MemoryBridge, Published
from tests.grpc.support import RawH2Client, grpc_frame

FIXED_NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def fixed_now() -> datetime.datetime:
    return FIXED_NOW


def capture_logs() -> Any:
    """structlog's capture_logs, with the context the peer tasks bind (peer_id, session_id) merged in."""
    return structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars])


def assert_no_secrets(logs: Iterable[Any], secrets: Iterable[str | bytes]) -> None:
    """No captured log entry (rendered with repr, which is what a renderer would see) holds any secret."""
    rendered = repr(list(logs))
    for secret in secrets:
        text = secret.decode() if isinstance(secret, bytes) else secret
        assert text and text not in rendered, "secret material in the logs"


class PeerClient(RawH2Client):
    """RawH2Client that notes when each message arrived and can stop reading (no WINDOW_UPDATE: the
    edge's sends stop at the flow-control window, as with a peer whose application stopped reading).
    A broken connection just ends it."""

    tolerant = True

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.reading = True
        self.arrivals: dict[int, list[tuple[float, bytes]]] = {}
        self._partial: dict[int, bytearray] = {}
        self.unacknowledged = 0

    def _data_received(self, event: h2.events.DataReceived) -> None:
        self._collect(event.stream_id, event.data)
        if self.reading:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        else:
            self.unacknowledged += event.flow_controlled_length

    def _collect(self, stream_id: int, data: bytes) -> None:
        buffer = self._partial.setdefault(stream_id, bytearray())
        buffer += data
        while len(buffer) >= 5:
            length = int.from_bytes(buffer[1:5], "big")
            if len(buffer) < 5 + length:
                break
            self.arrivals.setdefault(stream_id, []).append((trio.current_time(), bytes(buffer[5 : 5 + length])))
            del buffer[: 5 + length]


class TestPeer:
    """One `Connect` stream on its own in-memory connection."""

    __test__ = False  # not a pytest test class

    def __init__(self, client: PeerClient, stream_id: int) -> None:
        self.client = client
        self.stream_id = stream_id

    # ---- sending
    async def send(self, message: pb.PeerMessage | bytes, *, end: bool = False) -> None:
        body = message if isinstance(message, bytes) else message.SerializeToString()
        if self.client.closed or self.stream_id in self.client.ended or self.stream_id in self.client.resets:
            return
        try:
            self.client.send_raw(self.stream_id, grpc_frame(body), end=end)
            await self.client.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.H2Error):
            pass  # the stream or connection is already closed: a real peer's send would fail too

    async def register(self, peer_id: str, catalog: tuple[str, ...] = (), request_id: str = "reg") -> None:
        await self.send(
            pb.PeerMessage(
                request_id=request_id,
                registration_request=pb.PeerRegistrationRequest(peer_name=peer_id, catalog_uuids=list(catalog)),
            )
        )

    async def heartbeat(self) -> None:
        await self.send(pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1)))

    async def half_close(self) -> None:
        if self.client.closed:
            return
        try:
            self.client.h2.end_stream(self.stream_id)
            await self.client.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.H2Error):
            pass  # already closed

    async def reset(self, code: int = 8) -> None:
        """RST_STREAM(CANCEL): what a grpcio client sends when its call is cancelled."""
        if self.client.closed:
            return
        try:
            self.client.h2.reset_stream(self.stream_id, code)
            await self.client.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.H2Error):
            pass  # already closed

    async def drop(self) -> None:
        """Close the connection without a word (a killed process, a pulled cable noticed by TCP)."""
        await self.client.stream.aclose()

    # ---- what came back
    def received(self) -> list[pb.EdgeMessage]:
        return [pb.EdgeMessage.FromString(body) for _, body in self.client.arrivals.get(self.stream_id, [])]

    def arrivals(self, kind: str) -> list[float]:
        """Trio times at which messages of `kind` arrived."""
        out = []
        for at, body in self.client.arrivals.get(self.stream_id, []):
            if pb.EdgeMessage.FromString(body).WhichOneof("payload") == kind:
                out.append(at)
        return out

    def kinds(self) -> list[str]:
        return [m.WhichOneof("payload") for m in self.received()]

    @property
    def finished(self) -> bool:
        return self.client.closed or self.stream_id in self.client.ended or self.stream_id in self.client.resets

    def status(self) -> tuple[StatusCode, str] | None:
        """(grpc-status, grpc-message) once the edge ended the call, else None."""
        trailers = self.client.trailers(self.stream_id)
        if "grpc-status" not in trailers:
            return None
        return StatusCode(int(trailers["grpc-status"])), unquote(trailers.get("grpc-message", ""))

    async def wait_status(self) -> tuple[StatusCode, str]:
        await self.client.wait_until(lambda: self.status() is not None)
        status = self.status()
        assert status is not None
        return status

    async def wait_kind(self, kind: str) -> pb.EdgeMessage:
        await self.client.wait_until(lambda: kind in self.kinds())
        return next(m for m in self.received() if m.WhichOneof("payload") == kind)


class MemoryEdge:
    """The peer side of one edge with in-memory connections. Build with `memory_edge()`."""

    def __init__(self, settings: Settings, clients: trio.Nursery, event_buffer: int) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics.create(settings.edge_id)
        self.registry = PeerRegistry(
            max_peers=settings.max_peers, takeover_timeout=settings.shutdown_timeout_sec, now=fixed_now
        )
        self.events, self._events_out = open_event_channel(event_buffer, settings.kafka_event_buffer_bytes)
        self._endings, self._endings_out = trio.open_memory_channel[Ending](settings.max_peers)
        self.timers = Timers()
        self.handler = PeerStreamHandler(
            settings=settings,
            registry=self.registry,
            events=self.events,
            now=fixed_now,
            endings=self._endings,
            metrics=self.metrics,
            timers=self.timers,
        )
        self.config: GrpcServerConfig = grpc_config(settings)
        self.stats = GrpcServerStats()
        # Takes the records; the test reads them from `published` (presence twins from `presence`).
        self.bridge = MemoryBridge(presence_topic=settings.kafka_peer_presence_topic)
        self.published = self.bridge.published
        self.presence = self.bridge.presence
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.drained = trio.Event()
        self._clients = clients
        self._connections: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Like serve_peers: `serve_endings` and the connections inside a scope whose cancellation is
        shutdown; the event channel's send end is closed once every session's ending is queued."""
        try:
            async with self.events:
                with self.scope:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(serve_timers, self.timers)
                        await nursery.start(
                            partial(serve_endings, metrics=self.metrics),
                            self._endings_out,
                            self.events,
                            self.settings.shutdown_timeout_sec,
                        )
                        async with self._endings:
                            async with trio.open_nursery() as connections:
                                self._connections = connections
                                task_status.started()
                                await trio.sleep_forever()
        finally:
            self.stopped.set()

    async def drain(self) -> None:
        """The bridge's part: take records as they come, note the time."""
        async with self._events_out:
            await self.bridge.drain(self._events_out)
        self.drained.set()

    async def take(self) -> Published:
        """For tests without `drain`: the next record, at the time it is taken."""
        return await self.bridge.take(self._events_out)

    async def wait_published(self, predicate: Callable[[list[Published]], bool]) -> None:
        await self.bridge.wait_for(lambda: predicate(self.published), timeout=None)

    async def connect(self, *, extra_headers: tuple[tuple[str, str], ...] = ()) -> TestPeer:
        """A new connection with one `Connect` stream open on it (not yet registered)."""
        assert self._connections is not None
        server_end, client_end = trio.testing.memory_stream_pair()
        self._connections.start_soon(
            lambda: serve_grpc_connection(
                server_end, {CONNECT_PATH: self.handler}, self.config, metrics=self.metrics.grpc, stats=self.stats
            )
        )
        client = PeerClient(client_end)
        await client.start()
        self._clients.start_soon(client.run)
        stream_id = client.open_call(CONNECT_PATH, extra_headers=extra_headers)
        await client.flush()
        return TestPeer(client, stream_id)

    async def shutdown(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()

    # ---- reading what was published
    def lifecycle(self, peer_id: str | None = None) -> list[dict[str, Any]]:
        topic = self.settings.kafka_peer_lifecycle_events_topic
        return [
            p.value
            for p in self.published
            if p.record.topic == topic and (peer_id is None or p.record.key == peer_id)
        ]

    def lifecycle_at(self, event_type: str, peer_id: str) -> list[float]:
        topic = self.settings.kafka_peer_lifecycle_events_topic
        return [
            p.at
            for p in self.published
            if p.record.topic == topic and p.record.key == peer_id and p.value["event_type"] == event_type
        ]


#: Trio seconds a test may run in a MemoryEdge. Under autojump_clock a test that waits for something
#: that never comes reaches it at once and fails with TooSlowError instead of hanging.
TEST_DEADLINE_SEC = 3600


@asynccontextmanager
async def memory_edge(settings: Settings, *, drain: bool = True, event_buffer: int = 1000) -> AsyncIterator[MemoryEdge]:
    """A running MemoryEdge; shut down (every session ends, `shutdown`) when the block ends."""
    async with trio.open_nursery() as nursery:
        edge = MemoryEdge(settings, nursery, event_buffer)
        if drain:
            nursery.start_soon(edge.drain)
        await nursery.start(edge.serve)
        try:
            with trio.fail_after(TEST_DEADLINE_SEC):
                yield edge
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(settings.shutdown_timeout_sec * 3):
                await edge.shutdown()
                if drain:
                    await edge.drained.wait()
            nursery.cancel_scope.cancel()
