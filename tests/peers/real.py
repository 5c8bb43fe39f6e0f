"""Real-socket harness for the peer side: the edge's own composition (Kafka bridge outside, peer server
inside, as in `edge.serve`) on a real TLS port against a real Kafka broker, and grpcio peers
(`grpc.aio`) on one asyncio loop in a worker thread, driven from the Trio test.

Everything here runs on the real clock; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from functools import partial
from typing import Any

import attrs
import grpc
import structlog
import trio
import trio_asyncio

from edge.config import Settings, settings_for_tests
from edge.grpc import GrpcServerStats
from edge.kafka.bridge import serve_kafka_bridge
from edge.nursery import log_asyncio_exception, utc_now
from edge.ops.readiness import KafkaState
from edge.ops.runtime import EdgeRuntime
from edge.peers.registry import PeerRegistry
from edge.peers.server import grpc_config, serve_peers
from edge.presence import PresenceView
from edge.proto import CONNECT_PATH, pb
from edge.records import OutboundRecord

#: One TCP connection per grpcio channel (grpcio otherwise shares subchannels between channels).
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


def edge_settings(prefix: str, bootstrap: str, tls_files: Any, idempotence: bool, **overrides: Any) -> Settings:
    """Settings for one test's edge: TLS on with the trustme certificate, every topic named after
    `prefix` so tests never read each other's records."""
    topics = {
        "kafka_peer_lifecycle_events_topic": f"{prefix}-lifecycle",
        "kafka_peer_catalog_updates_topic": f"{prefix}-catalog",
        "kafka_file_delete_responses_topic": f"{prefix}-delete",
        "kafka_file_hash_responses_topic": f"{prefix}-hash",
        "kafka_screenshot_capture_responses_topic": f"{prefix}-screenshot",
        "kafka_file_remap_responses_topic": f"{prefix}-remap",
        "kafka_peer_presence_topic": f"{prefix}-presence",
    }
    return settings_for_tests(
        edge_id=prefix,
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=idempotence,
        grpc_use_tls=True,
        grpc_cert_path=tls_files.cert_path,
        grpc_key_path=tls_files.key_path,
        **{**topics, **overrides},
    )


@attrs.define
class RunningEdge:
    port: int
    registry: PeerRegistry
    stats: GrpcServerStats
    scope: trio.CancelScope
    stopped: trio.Event
    state: KafkaState = attrs.field(factory=KafkaState)

    async def caught_up(self, timeout: float = 60) -> None:
        """Wait until the presence view has read the presence topic to its end (part of readiness)."""
        with trio.fail_after(timeout):
            while not self.state.presence_caught_up:
                await self.state.changed.wait()

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(60):
            await self.stopped.wait()

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
    settings: Settings, now: Callable[[], datetime.datetime] = utc_now
) -> AsyncIterator[RunningEdge]:
    """`edge.serve`'s composition with the registry, transport counters and Kafka state in the test's
    hands. `now`: the edge's wall clock."""
    events_send, events_receive = trio.open_memory_channel[OutboundRecord](settings.kafka_event_buffer_size)
    registry = PeerRegistry(
        max_peers=settings.max_peers,
        takeover_timeout=settings.shutdown_timeout_sec,
        edge_id=settings.edge_id,
        presence=PresenceView(settings.presence_max_peers),
        now=now,
    )
    state = KafkaState()
    stats = GrpcServerStats()
    scope = trio.CancelScope()
    stopped = trio.Event()
    grpc_settings = grpc_config(settings)
    runtime = EdgeRuntime.create(settings.edge_id)  # its metrics and readiness; the transport counters are `stats`

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        try:
            with scope:
                async with trio_asyncio.open_loop() as loop:
                    loop.set_exception_handler(log_asyncio_exception)
                    async with trio.open_nursery() as nursery:
                        await nursery.start(
                            partial(serve_kafka_bridge, metrics=runtime.metrics),
                            settings,
                            events_receive,
                            events_send.clone(),
                            registry,
                            state,
                            now,
                        )
                        port = await nursery.start(
                            partial(serve_peers, runtime=runtime, config=grpc_settings, stats=stats),
                            settings,
                            events_send,
                            registry,
                            now,
                        )
                        task_status.started(port)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve)
        edge = RunningEdge(port, registry, stats, scope, stopped, state)
        try:
            yield edge
        finally:
            with trio.CancelScope(shield=True):
                await edge.stop()


# ------------------------------------------------------------------------------------ grpcio peers


class AioThread:
    """One asyncio loop in a worker thread, for grpc.aio peers; `await run(coroutine)` from Trio."""

    def __init__(self) -> None:
        ready = threading.Event()
        loops: list[asyncio.AbstractEventLoop] = []

        def main() -> None:
            # A plain asyncio loop (not the policy's: trio-asyncio installs its own), made, run and
            # closed in this thread.
            loop = asyncio.SelectorEventLoop()
            loops.append(loop)
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="grpcio-peers", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.loop = loops[0]

    async def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            with trio.fail_after(timeout):
                return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        finally:
            future.cancel()

    async def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        await self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self._thread.join, 10)


@contextlib.asynccontextmanager
async def aio_thread() -> AsyncIterator[AioThread]:
    thread = AioThread()
    try:
        yield thread
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await thread.close()


def channel(port: int, ca_pem: bytes) -> grpc.aio.Channel:
    """A TLS grpc.aio channel of its own (call on the asyncio thread)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(f"localhost:{port}", credentials, options=[OWN_CONNECTION])


class AioPeer:
    """One `Connect` call from grpc.aio; messages go as raw bytes so a test can send anything.
    Create and use on the asyncio thread."""

    def __init__(self, chan: grpc.aio.Channel) -> None:
        method = chan.stream_stream(CONNECT_PATH, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        self.call = method()
        self.received: list[pb.EdgeMessage] = []

    async def send(self, message: pb.PeerMessage | bytes) -> None:
        await self.call.write(message if isinstance(message, bytes) else message.SerializeToString())

    async def register(self, peer_id: str, catalog: tuple[str, ...] = (), request_id: str = "reg") -> pb.EdgeMessage:
        await self.send(
            pb.PeerMessage(
                request_id=request_id,
                registration_request=pb.PeerRegistrationRequest(peer_name=peer_id, catalog_uuids=list(catalog)),
            )
        )
        return await self.read_kind("registration_response")

    async def read(self) -> pb.EdgeMessage | None:
        body = await self.call.read()
        if body is grpc.aio.EOF:
            return None
        message = pb.EdgeMessage.FromString(body)
        self.received.append(message)
        return message

    async def read_kind(self, kind: str) -> pb.EdgeMessage:
        while True:
            message = await self.read()
            if message is None:
                raise AssertionError(f"stream ended ({await self.call.code()}) while waiting for {kind}")
            if message.WhichOneof("payload") == kind:
                return message

    async def heartbeat_every(self, interval: float, stop: asyncio.Event) -> None:
        """Send heartbeats until `stop` is set or the call ends.

        Stop it before the edge ends the call: grpc.aio reports a write that races the call's end as
        the call's status (INTERNAL "Internal error from Core"), hiding the status the edge sent."""
        while not self.call.done() and not stop.is_set():
            try:
                await self.send(pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1)))
            except grpc.aio.AioRpcError:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """Read until the edge ends the call; its status code and details."""
        try:
            while await self.read() is not None:
                pass
        except grpc.aio.AioRpcError:
            pass
        except asyncio.CancelledError:
            if not self.call.cancelled():  # grpc.aio raises it for reads on a call we cancelled
                raise
        return await self.call.code(), await self.call.details()


@contextlib.contextmanager
def production_logging(path: Path) -> Iterator[None]:
    """structlog as `python -m edge run` sets it up (JSON lines, level info: debug events are dropped
    before they are rendered), written to `path`; structlog's defaults are restored afterwards.
    Loggers are not cached, so other tests see the defaults again."""
    with open(path, "w") as out:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.PrintLoggerFactory(out),
            cache_logger_on_first_use=False,
        )
        try:
            yield
        finally:
            structlog.reset_defaults()


def parse_timestamp(text: str) -> datetime.datetime:
    assert text.endswith("Z"), text
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
