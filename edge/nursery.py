"""The root supervisor: `serve` (the edge, also for embedding) and `run` (the process, for the CLI).

Task tree of `serve`; nesting is shutdown order, innermost first:

    serve                              trio-asyncio loop, event channel, registry
      serve_kafka_bridge               (edge.kafka) producer, command consumer and router; outlives
                                       the peer side; holds a clone of the event channel's send end
                                       for dead letters
      serve_peers                      (edge.peers) gRPC server, one task per peer session

Cancelling the scope around `serve` ends every session with reason `shutdown`; each queues its
`disconnected` event, the peer side then closes its end of the event channel, the command consumer
commits what is settled and closes its end, and the producer, which keeps draining the channel
under a shielded deadline until every end is closed, produces them before its Kafka client closes. A Trio program
embeds the edge with `port = await nursery.start(edge.serve, settings)` and stops it by cancelling
that nursery.

`run` adds what only a process has: signal handling and, for a fresh machine, an embedded broker,
which it nests outside the edge so the broker outlives the final flush.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
from functools import partial
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio
import trio_asyncio

from edge.config import Settings
from edge.kafka.bridge import serve_kafka_bridge
from edge.kafka.state import KafkaState
from edge.peers.admission import load_admission
from edge.peers.registry import PeerRegistry
from edge.peers.server import grpc_config, serve_peers
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)


def utc_now() -> datetime.datetime:
    """The one wall clock of the edge: timestamps in records, never timing."""
    return datetime.datetime.now(datetime.timezone.utc)


def _log_asyncio_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # trio-asyncio's default handler re-raises into the loop's nursery, which would tear the whole
    # loop down for one stray failed future (RISKS 9). Log it instead.
    error = context.get("exception")
    log.error("asyncio_unhandled", message=context.get("message"), error=repr(error) if error else None)


async def serve(
    settings: Settings,
    *,
    now: Callable[[], datetime.datetime] = utc_now,
    kafka_state: KafkaState | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the edge until cancelled. Reports the bound gRPC port through `task_status`.

    `kafka_state`, if given, is kept up to date with the Kafka bridge's connections (readiness).
    """
    grpc = grpc_config(settings)  # reads the certificates: a bad one fails here, before anything runs
    admission = load_admission(settings, now)  # the same for peer token keys (docs/security.md)
    events_send, events_receive = trio.open_memory_channel[OutboundRecord](settings.kafka_event_buffer_size)
    registry = PeerRegistry(max_peers=settings.max_peers, takeover_timeout=settings.shutdown_timeout_sec)
    kafka = kafka_state if kafka_state is not None else KafkaState()
    dead_letters = events_send.clone()  # the bridge's own send end, for dead letters
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_asyncio_exception)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(serve_kafka_bridge, now=now), settings, events_receive, dead_letters, registry, kafka
            )
            peers = partial(serve_peers, config=grpc, admission=admission)
            port = await nursery.start(peers, settings, events_send, registry, now)
            log.info("edge_started", edge_id=settings.edge_id, port=port)
            task_status.started(port)
    log.info("edge_stopped", edge_id=settings.edge_id)


async def run(settings: Settings, *, embedded_kafka: bool = False) -> None:
    """The `python -m edge run` process: the edge, signals, and optionally an embedded broker."""
    async with trio.open_nursery() as outer:
        if embedded_kafka:
            from edge.embedded_kafka import serve_embedded_kafka

            bootstrap = await outer.start(serve_embedded_kafka)
            # The embedded broker rejects idempotent producers.
            settings = attrs.evolve(settings, kafka_bootstrap_servers=bootstrap, kafka_enable_idempotence=False)
            log.info("embedded_kafka_started", bootstrap=bootstrap)
        with trio.CancelScope() as edge_scope:
            # The watcher lives outside the edge's scope so it still hears a second signal while the
            # edge drains.
            outer.start_soon(_watch_signals, edge_scope)
            async with trio.open_nursery() as inner:
                await inner.start(serve, settings)
        outer.cancel_scope.cancel()


async def _watch_signals(edge_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if edge_scope.cancel_called:
                log.warning("second_signal_exiting_now", signal=signal.Signals(signum).name)
                os._exit(1)
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            edge_scope.cancel()
