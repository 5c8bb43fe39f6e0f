"""Helpers for the identity and abuse-limit tests: the peer side of the edge on real TLS sockets with its
event channel drained by the test (no Kafka: these tests claim gRPC behaviour), a TCP relay that makes
clients appear from another loopback address, and a check that no secret reached the logs."""

from __future__ import annotations

import collections
import contextlib
import datetime
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import trio

from edge.config import Settings
from edge.nursery import utc_now
from edge.ops.runtime import EdgeRuntime
from edge.peers.admission import Admission, load_admission
from edge.peers.registry import PeerRegistry
from edge.peers.server import serve_peers
from edge.records import OutboundRecord


@attrs.define
class Received:
    record: OutboundRecord
    at: float  # trio.current_time() when the test's drain took it


@attrs.define(eq=False)
class RunningPeers:
    port: int
    registry: PeerRegistry
    admission: Admission
    received: list[Received]
    #: The edge's metrics, transport counters and refusal tally.
    runtime: EdgeRuntime
    #: Records taken so far, by key (cheap to check on every record, unlike scanning `received`).
    counts: collections.Counter[str | None] = attrs.field(factory=collections.Counter)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def records(self, topic: str | None = None, event_type: str | None = None) -> list[OutboundRecord]:
        return [
            item.record
            for item in self.received
            if (topic is None or item.record.topic == topic)
            and (event_type is None or item.record.value.get("event_type") == event_type)
        ]

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        """Until `predicate()` holds: woken by every record, and every 10 ms for other state."""
        with trio.fail_after(timeout):
            while not predicate():
                with trio.move_on_after(0.01):
                    await self._changed.wait()


@contextlib.asynccontextmanager
async def running_peers(settings: Settings, now: Callable[[], datetime.datetime] = utc_now) -> AsyncIterator[RunningPeers]:
    """`serve_peers` as the edge runs it (certificates and keys read by the product's own start-up code),
    with the event channel drained into `received` instead of Kafka."""
    send, receive = trio.open_memory_channel[OutboundRecord](settings.kafka_event_buffer_size)
    registry = PeerRegistry(max_peers=settings.max_peers, takeover_timeout=settings.shutdown_timeout_sec)
    admission = load_admission(settings, now)
    received: list[Received] = []
    async with trio.open_nursery() as nursery:
        running: RunningPeers | None = None

        async def drain() -> None:
            async with receive:
                async for record in receive:
                    received.append(Received(record, trio.current_time()))
                    if running is not None:
                        running.counts[record.key] += 1
                        running.notify()

        nursery.start_soon(drain)  # ends when serve_peers closes the channel, after the last `disconnected`
        peer_scope = trio.CancelScope()
        runtime = EdgeRuntime.create(settings.edge_id)

        async def serve(task_status: trio.TaskStatus[int]) -> None:
            with peer_scope:
                await serve_peers(
                    settings,
                    send,
                    registry,
                    now,
                    runtime=runtime,
                    admission=admission,
                    task_status=task_status,
                )

        port = await nursery.start(serve)
        running = RunningPeers(port=port, registry=registry, admission=admission, received=received, runtime=runtime)
        try:
            yield running
        finally:
            peer_scope.cancel()


async def serve_relay(
    target_port: int, source_host: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A plain TCP relay on 127.0.0.1:<port> to 127.0.0.1:`target_port`, connecting *from* `source_host`
    (e.g. 127.0.0.2): every loopback client shares 127.0.0.1, so this is how a real grpcio client shows
    up at the edge from another source address. TLS passes through untouched."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def relay(client: trio.SocketStream) -> None:
        async with client:
            upstream = await trio.open_tcp_stream("127.0.0.1", target_port, local_address=source_host)
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, relay, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def _pump(source: trio.SocketStream, target: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await target.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


def assert_no_secrets(logs: Iterable[Any], secrets: Iterable[str | bytes]) -> None:
    """No captured log entry (rendered with repr, which is what a renderer would see) holds any secret."""
    rendered = repr(list(logs))
    for secret in secrets:
        text = secret.decode() if isinstance(secret, bytes) else secret
        assert text and text not in rendered, "secret material in the logs"
