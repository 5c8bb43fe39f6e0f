"""The root supervisor: `serve` (the edge, also for embedding) and `run` (the process, for the CLI).

Task tree of `serve`; nesting is shutdown order, innermost first:

    serve                              trio-asyncio loop, event channel, registry
      serve_ops_http                   (edge.ops.http) /healthz, /readyz, /metrics; outlives the drain
      serve_refusal_summaries          (edge.grpc.refusals) one log line per interval of refusals
      serve_memory_trim                (edge.ops.memory) the C heap trimmed once a minute
      serve_kafka_bridge               (edge.kafka) producer, command consumer and router; outlives
                                       the peer side; holds a clone of the event channel's send end
                                       for dead letters
      serve_peers                      (edge.peers) gRPC server, one task per peer session

Cancelling the scope around `serve` ends every session with reason `shutdown`; each queues its
`disconnected` event, the peer side then closes its end of the event channel, the command consumer
commits what is settled and closes its end, and the producer, which keeps draining the channel
under a shielded deadline until every end is closed, produces them before its Kafka client closes. A Trio program
embeds the edge with `started = await nursery.start(edge.serve, settings)` (a `Started`: the bound
ports, the runtime, the registry) and stops it by cancelling that nursery.

`run` adds what only a process has: signal handling, for a fresh machine an embedded broker, which it
nests outside the edge so the broker outlives the final flush, and the collector's part in the drain:
off from the first signal, the heap frozen once the edge has stopped (edge.ops.gc_policy).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
from functools import partial
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
import trio
import trio_asyncio

from edge.config import Address, Settings
from edge.grpc.refusals import serve_refusal_summaries
from edge.kafka.bridge import serve_kafka_bridge
from edge.ops.fd_limit import raise_open_files_limit
from edge.ops.gc_policy import collector_off_for_drain, heap_frozen_for_exit, tune_collector
from edge.ops.http import serve_ops_http
from edge.ops.memory import serve_memory_trim
from edge.ops.readiness import KafkaState
from edge.ops.runtime import EdgeRuntime
from edge.peers.admission import load_admission
from edge.peers.registry import PeerRegistry
from edge.peers.server import grpc_config, serve_peers
from edge.presence import PresenceView
from edge.handoff import open_event_channel

log = structlog.get_logger(__name__)


class StartupRefused(Exception):
    """The environment refused what a setting asks for (an address in use or not on this host, a port
    the user may not bind, a file it may not read). `setting` is the variable, `value` its value."""

    def __init__(self, setting: str, value: object, error: OSError) -> None:
        self.setting = setting
        self.value = value
        self.error = error
        # os.strerror: the system's words, not those of a layer that re-raised it with its own text.
        cause = f"{os.strerror(error.errno)} (errno {error.errno})" if error.errno else str(error)
        super().__init__(f"{setting}={value}: {cause[:1].lower()}{cause[1:]}")


def _refused(setting: str, value: object, group: BaseExceptionGroup[OSError]) -> Exception:
    """One StartupRefused per OSError of `group` (a group of them if there are several)."""
    refusals = [StartupRefused(setting, value, error) for error in _oserrors(group)]
    return refusals[0] if len(refusals) == 1 else ExceptionGroup(f"{setting} refused", refusals)


def _oserrors(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    found: list[OSError] = []
    for error in group.exceptions:
        found.extend(_oserrors(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def utc_now() -> datetime.datetime:
    """The one wall clock of the edge: timestamps in records, never timing."""
    return datetime.datetime.now(datetime.timezone.utc)


def log_asyncio_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The trio-asyncio loop's exception handler: log a stray asyncio error (`asyncio_unhandled`).

    trio-asyncio's default handler re-raises into the loop's nursery, which would tear the whole loop
    down for one stray failed future. Public for programs and tests that open the loop themselves.
    """
    error = context.get("exception")
    log.error("asyncio_unhandled", message=context.get("message"), error=repr(error) if error else None)


@attrs.frozen
class Started:
    """What `serve` reports through `task_status` once peers can connect.

    `grpc_port` and `http_port` are the ports actually bound (useful with port 0; `http_port` is None
    when HEALTH_HTTP_ADDRESS is off); `runtime` holds the metrics, readiness and transport counters;
    `registry` the live peer sessions.
    """

    grpc_port: int
    http_port: int | None
    runtime: EdgeRuntime
    registry: PeerRegistry


#: The Kafka bridge's signature. `serve` takes another one for tests that must keep Kafka out (timed
#: tests under MockClock, docs/design.md#mock-clock-real-io): it receives the event channel's receive end and
#: a clone of its send end (for dead letters; it must close it), the peer registry, the KafkaState to report
#: its connection in, and keywords `now` and `metrics`; it must drain the channel until it is closed, and
#: release what it took (`EventReceiver.release`) once done with it, or senders wait on the byte budget.
Bridge = Callable[..., Awaitable[None]]


async def serve(
    settings: Settings,
    *,
    now: Callable[[], datetime.datetime] = utc_now,
    runtime: EdgeRuntime | None = None,
    kafka_state: KafkaState | None = None,
    bridge: Bridge = serve_kafka_bridge,
    raise_open_files: bool = False,
    task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the edge until cancelled. Reports a `Started` through `task_status` once peers can connect.

    `runtime` (made here if not given) holds the metrics, the readiness state and the bound ports; pass
    one to read them from outside. `kafka_state`, if given, is the one the bridge keeps up to date
    (the runtime's readiness reads it). The ops HTTP endpoint (HEALTH_HTTP_ADDRESS) starts first and
    stops last: it keeps answering during the drain (`/readyz` 503, `/metrics` live) for at most
    SHUTDOWN_DEADLINE_SEC after cancellation. `raise_open_files`: raise RLIMIT_NOFILE to its hard limit
    (edge.ops.fd_limit) and set the collector's thresholds (edge.ops.gc_policy) once the settings are known
    to be valid (`run` does; an embedding program need not).
    """
    grpc = grpc_config(settings)  # reads the certificates: a bad one fails here, before anything runs
    admission = load_admission(settings, now)  # the same for peer token keys (docs/security.md)
    if raise_open_files:  # process-wide: only the process (`run`) sets them, once the settings are valid
        raise_open_files_limit(settings.grpc_max_connections)
        tune_collector()
    runtime = runtime if runtime is not None else EdgeRuntime.create(settings.edge_id)
    events_send, events_receive = open_event_channel(settings.kafka_event_buffer_size, settings.kafka_event_buffer_bytes)
    runtime.metrics.observe_event_buffer(events_receive.queued, settings.kafka_event_buffer_size)
    runtime.metrics.observe_event_bytes(lambda: events_send.budget.held, settings.kafka_event_buffer_bytes)
    registry = PeerRegistry(
        max_peers=settings.max_peers,
        takeover_timeout=settings.shutdown_timeout_sec,
        edge_id=settings.edge_id,
        presence=PresenceView(settings.presence_max_peers),
        now=now,
    )
    if kafka_state is not None:
        runtime.health.kafka = kafka_state
    kafka = runtime.health.kafka
    dead_letters = events_send.clone()  # the bridge's own send end, for dead letters
    started = False
    try:
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(log_asyncio_exception)
            async with trio.open_nursery() as outer:
                # Shielded so that cancelling `serve` does not close it at once; `_drain_started` gives
                # the shield its deadline the moment the drain begins, and it is cancelled when the
                # edge below has stopped.
                ops_scope = trio.CancelScope(shield=True)
                if settings.health_http_address is not None:
                    try:
                        await outer.start(_serve_ops_http_in, ops_scope, settings.health_http_address, runtime)
                    except OSError as error:
                        raise StartupRefused("HEALTH_HTTP_ADDRESS", settings.health_http_address, error) from None
                # Refusals on either port: one summary line per interval (the last one as the edge stops);
                # the C heap trimmed now and then, so a flood's memory goes back once it is over.
                upkeep_scope = trio.CancelScope()
                await outer.start(_serve_upkeep_in, upkeep_scope, runtime)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_drain_started, ops_scope, settings)
                        await nursery.start(
                            partial(bridge, now=now, metrics=runtime.metrics),
                            settings,
                            events_receive,
                            dead_letters,
                            registry,
                            kafka,
                        )
                        peers = partial(serve_peers, config=grpc, admission=admission, runtime=runtime)
                        try:
                            port = await nursery.start(peers, settings, events_send, registry, now)
                        except* OSError as group:  # before `started`, only binding the port does I/O
                            raise _refused("GRPC_SERVER_ADDRESS", settings.grpc_server_address, group) from None
                        log.info("edge_started", edge_id=settings.edge_id, port=port, http_port=runtime.http_port)
                        task_status.started(Started(port, runtime.http_port, runtime, registry))
                        started = True
                finally:
                    ops_scope.cancel()
                    upkeep_scope.cancel()
    finally:  # cancelled (the usual way to stop) or failed, once it had started
        if started:
            log.info("edge_stopped", edge_id=settings.edge_id)


async def _serve_ops_http_in(
    scope: trio.CancelScope, address: Address, runtime: EdgeRuntime, *, task_status: trio.TaskStatus[int]
) -> None:
    with scope:
        await serve_ops_http(address, runtime, task_status=task_status)


async def _serve_upkeep_in(scope: trio.CancelScope, runtime: EdgeRuntime, *, task_status: trio.TaskStatus[None]) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_memory_trim)
            await nursery.start(serve_refusal_summaries, runtime.refusals)
            task_status.started()


async def _drain_started(ops_scope: trio.CancelScope, settings: Settings) -> None:
    """Waits for the edge's cancellation; then bounds what must outlive it (the ops endpoint)."""
    try:
        await trio.sleep_forever()
    finally:
        ops_scope.deadline = trio.current_time() + settings.shutdown_deadline_sec
        log.info("edge_draining", edge_id=settings.edge_id, deadline_sec=settings.shutdown_deadline_sec)


async def run(settings: Settings, *, embedded_kafka: bool = False, embedded_kafka_port: int = 0) -> None:
    """The `python -m edge run` process: the edge, signals, and optionally an embedded broker."""
    async with trio.open_nursery() as outer:
        if embedded_kafka:
            from edge.embedded_kafka import serve_embedded_kafka

            bootstrap = await outer.start(partial(serve_embedded_kafka, port=embedded_kafka_port))
            # The embedded broker rejects idempotent producers.
            settings = attrs.evolve(settings, kafka_bootstrap_servers=bootstrap, kafka_enable_idempotence=False)
            log.info("embedded_kafka_started", bootstrap=bootstrap)
        with trio.CancelScope() as edge_scope:
            # The watcher lives outside the edge's scope so it still hears a second signal while the
            # edge drains.
            outer.start_soon(_watch_signals, edge_scope, settings.shutdown_deadline_sec)
            async with trio.open_nursery() as inner:
                await inner.start(partial(serve, settings, raise_open_files=True))
        log.info("shutdown_complete", edge_id=settings.edge_id)
        heap_frozen_for_exit()  # the exit need not collect what it frees whole (edge.ops.gc_policy)
        outer.cancel_scope.cancel()


async def _watch_signals(edge_scope: trio.CancelScope, deadline_sec: float) -> None:
    """First SIGINT/SIGTERM: drain (cancel the edge) under SHUTDOWN_DEADLINE_SEC. Second: exit now."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if edge_scope.cancel_called:
                    log.warning("second_signal_exiting_now", signal=signal.Signals(signum).name)
                    os._exit(1)
                log.info("shutdown_requested", signal=signal.Signals(signum).name, deadline_sec=deadline_sec)
                collector_off_for_drain()  # no full collections during the drain (edge.ops.gc_policy)
                edge_scope.cancel()
                nursery.start_soon(_exit_at_deadline, deadline_sec)


async def _exit_at_deadline(deadline_sec: float) -> None:
    """The whole drain is bounded: past SHUTDOWN_DEADLINE_SEC the process exits with code 1 (what was
    still being flushed is lost, as with SIGKILL, but the operator is told)."""
    await trio.sleep(deadline_sec)
    log.error("shutdown_deadline_exceeded", deadline_sec=deadline_sec)
    os._exit(1)
