"""`serve_peers`: the gRPC server and every peer session under it.

Task tree (each line owns the ones below it; cancelling one ends those below first):

    serve_peers                owns the event channel's send end and the peer registry
      serve_timers             the edge's timers: handshake deadlines, heartbeats, silence checks
      serve_endings            queues each ended session's last records and `disconnected`
      serve_grpc               accept loop, one task per connection, one per stream
        PeerStreamHandler      one per Connect stream: handshake -> Session.serve -> cleanup
          Session tasks        reader and writer, in the session's own cancel scope (its heartbeat and
                               silence check are timers on `serve_timers`)

When `serve_peers` is cancelled, every session ends with reason `shutdown` and hands its
`disconnected` event to `serve_endings`; once the gRPC server has returned, the handover channel is
closed, `serve_endings` finishes queuing (shielded, under SHUTDOWN_TIMEOUT_SEC), and only then is the
send end of the event channel closed, so the Kafka bridge, which drains the channel until it is
closed, publishes them all.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable, Mapping
from functools import partial

import structlog
import trio

from edge.config import ConfigError, Settings
from edge.grpc import (
    GrpcServerConfig, GrpcServerStats, Handler, HeldBytesBudget, InboundBudget, ServerMetrics, serve_grpc
)
from edge.grpc.tls import server_ssl_context
from edge.ops.runtime import EdgeRuntime
from edge.peers.admission import Admission, apply_peer_tls, load_admission
from edge.peers.endings import Ending, serve_endings
from edge.peers.handler import PeerStreamHandler
from edge.peers.limits import message_meter_factory
from edge.peers.registry import PeerRegistry
from edge.proto import CONNECT_PATH
from edge.handoff import EventSender
from edge.timers import Timers, serve_timers

log = structlog.get_logger(__name__)


def grpc_config(settings: Settings) -> GrpcServerConfig:
    """The transport settings for the peer port. Certificates are read here, once, at start-up."""
    ssl_context = None
    if settings.grpc_use_tls:
        for variable, path in (("GRPC_CERT_PATH", settings.grpc_cert_path), ("GRPC_KEY_PATH", settings.grpc_key_path)):
            if not path.is_file():
                raise ConfigError(
                    variable,
                    "a readable PEM file while GRPC_USE_TLS is true (python -m edge certs writes development ones)",
                    str(path),
                )
        try:
            ssl_context = server_ssl_context(settings.grpc_cert_path, settings.grpc_key_path)
        except (OSError, ssl.SSLError):
            raise ConfigError(
                "GRPC_CERT_PATH", "a PEM certificate matching the PEM key at GRPC_KEY_PATH", str(settings.grpc_cert_path)
            ) from None
        apply_peer_tls(ssl_context, settings)  # client certificates (PEER_AUTH_MODE)
    return GrpcServerConfig(
        host=settings.grpc_server_address.host,
        port=settings.grpc_server_address.port,
        ssl_context=ssl_context,
        max_message_bytes=settings.grpc_max_message_bytes,
        max_concurrent_streams=settings.grpc_max_concurrent_streams,
        max_connections=settings.grpc_max_connections,
        max_connections_per_address=settings.grpc_max_connections_per_address,
        idle_timeout=settings.grpc_idle_timeout_sec,
        shutdown_grace=settings.shutdown_timeout_sec,
        message_meter=message_meter_factory(settings.peer_message_rate, settings.peer_message_burst),
        # A Connect stream's window stays at the initial 64 KiB until admission opens it (credentials
        # checked on its HEADERS), and what it holds before registering counts against one budget.
        held_paths=frozenset({CONNECT_PATH}),
        held_budget=HeldBytesBudget(settings.peer_unregistered_buffer_bytes),
        # Every stream's unconsumed bytes, registered or not: over it, peers get backpressure.
        inbound_budget=InboundBudget(settings.grpc_inbound_buffer_bytes),
    )


async def serve_peers(
    settings: Settings,
    events: EventSender,
    registry: PeerRegistry,
    now: Callable[[], datetime.datetime],
    *,
    runtime: EdgeRuntime,
    config: GrpcServerConfig | None = None,
    admission: Admission | None = None,
    stats: GrpcServerStats | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve peers until cancelled. Reports the bound gRPC port through `task_status`.

    `runtime` holds the metrics, the readiness flag it sets and the port it reports. `config` and
    `admission` are built from `settings` (reading certificates and keys) unless given.
    `stats` receives the transport's live counters (default: the runtime's, which /metrics reads).
    """
    config = config if config is not None else grpc_config(settings)
    admission = admission if admission is not None else load_admission(settings, now)
    endings_send, endings_receive = trio.open_memory_channel[Ending](settings.max_peers)
    timers = Timers()
    handler = PeerStreamHandler(
        settings=settings,
        registry=registry,
        events=events,
        now=now,
        endings=endings_send,
        admission=admission,
        metrics=runtime.metrics,
        timers=timers,
    )
    # Connect goes through admission (throttle, unregistered-stream cap); gRPC health and reflection
    # do not (load balancers probe them), and bound their own streams.
    routes = {CONNECT_PATH: admission.guard(handler, runtime.metrics), **runtime.ops_routes()}
    stats = stats if stats is not None else runtime.grpc_stats
    async with events:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_timers, timers)
            await nursery.start(
                partial(serve_endings, metrics=runtime.metrics), endings_receive, events, settings.shutdown_timeout_sec
            )
            port = await nursery.start(_serve_grpc, endings_send, config, routes, stats, runtime.metrics.grpc)
            log.info("peers_listening", host=config.host, port=port, tls=config.ssl_context is not None)
            runtime.grpc_port = port
            runtime.health.set_accepting(True)
            task_status.started(port)
            try:
                await trio.sleep_forever()
            finally:
                runtime.health.set_accepting(False)  # first step of a drain: health says NOT_SERVING


async def _serve_grpc(
    endings: trio.MemorySendChannel[Ending],
    config: GrpcServerConfig,
    routes: Mapping[str, Handler],
    stats: GrpcServerStats | None,
    metrics: ServerMetrics,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """serve_grpc, then close the endings channel: every handler has handed over its ending by then."""
    async with endings:
        await serve_grpc(config, routes, metrics=metrics, stats=stats, task_status=task_status)
