"""Helpers for the operations tests: a gate in front of Kafka, an HTTP GET, an in-memory bridge."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from edge.config import Settings
from edge.ops.readiness import KafkaState
from edge.peers.registry import PeerRegistry
from edge.records import OutboundRecord


@attrs.define(eq=False)
class KafkaGate:
    """A TCP forwarder standing in for the bootstrap address: while closed, every connection is
    accepted and dropped at once (the broker looks down); once opened, bytes flow to the broker.

    Only the bootstrap connection goes through it: Kafka's metadata then points clients at the
    broker's own address."""

    target_host: str
    target_port: int
    port: int = 0
    is_open: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        await trio.serve_listeners(self._handle, [listener], task_status=task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.is_open:
                return
            try:
                upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


@contextlib.asynccontextmanager
async def kafka_gate(bootstrap: str) -> AsyncIterator[KafkaGate]:
    host, port = bootstrap.rsplit(":", 1)
    gate = KafkaGate(host, int(port))
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.serve)
        yield gate
        nursery.cancel_scope.cancel()


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET http://127.0.0.1:port/path with the standard library (in a worker thread)."""
    return await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}{path}")


@attrs.define(eq=False)
class MemoryBridge:
    """An in-memory Kafka bridge for timed tests (Kafka stays out of MockClock,
    docs/design.md#mock-clock-real-io).

    Reports itself connected, collects what it would produce in `records`, and, like the real one,
    keeps draining after cancellation until the peer side closes the channel, for at most
    SHUTDOWN_TIMEOUT_SEC; with `stalled` set it takes nothing (a Kafka that accepts nothing)."""

    records: list[OutboundRecord] = attrs.field(factory=list)
    stalled: bool = False
    closed_at: float | None = None
    changed: trio.Event = attrs.field(factory=trio.Event)

    async def __call__(
        self,
        settings: Settings,
        events: trio.MemoryReceiveChannel[OutboundRecord],
        dead_letters: trio.MemorySendChannel[OutboundRecord],
        registry: PeerRegistry,
        kafka: KafkaState,
        *,
        now: object = None,
        metrics: object = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await dead_letters.aclose()  # no commands here, so no dead letters
        kafka.consumer_enabled = False
        kafka.set_producer(True)
        task_status.started()
        async with events:
            try:
                await self._drain(events)
            finally:
                with trio.move_on_after(settings.shutdown_timeout_sec, shield=True):
                    await self._drain(events)
                kafka.set_producer(False)
                self.closed_at = trio.current_time()

    async def _drain(self, events: trio.MemoryReceiveChannel[OutboundRecord]) -> None:
        if self.stalled:
            await trio.sleep_forever()
        async for record in events:
            self.records.append(record)
            event, self.changed = self.changed, trio.Event()
            event.set()

    async def wait_for(self, predicate: Any) -> None:
        while not predicate(self.records):
            await self.changed.wait()

    def lifecycle(self) -> list[tuple[str, str, str | None]]:
        return [
            (r.value["peer_id"], r.value["event_type"], r.value.get("reason"))
            for r in self.records
            if "event_type" in r.value
        ]
