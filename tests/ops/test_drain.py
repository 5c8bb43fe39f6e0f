"""Drain timing of the in-process `serve`, under MockClock (no wall-clock time): the edge's own
simulated peers (edge.tools.peer_sim, in the same Trio loop, over loopback TCP) and an in-memory
Kafka bridge (docs/design.md#mock-clock-real-io keeps Kafka out of MockClock tests)."""

from __future__ import annotations

import collections
import gc
import os
import signal

import trio
import trio.testing
from structlog.testing import capture_logs

import edge.nursery as nursery_module
from edge.config import settings_for_tests
from edge.tools.peer_sim import PeerSimulation, SimConfig
from testing.harness import MemoryBridge, running_edge

PEERS = 12


async def start_peers(nursery, port):
    simulation = PeerSimulation(
        SimConfig(host="127.0.0.1", port=port, tls=False, peers=PEERS, reconnect=False, connect_rate=0, catalog_size=2)
    )
    nursery.start_soon(simulation.run)
    return simulation


async def test_drain_ends_every_session_with_shutdown_at_once(autojump_clock):
    """Cancel with a healthy bridge: every session ends `shutdown`, each `disconnected` reaches the
    bridge, every peer sees UNAVAILABLE, health stops accepting, and it all takes no time at all."""
    settings = settings_for_tests(shutdown_timeout_sec=10.0)
    bridge = MemoryBridge()
    async with running_edge(settings, bridge=bridge) as edge, trio.open_nursery() as nursery:
        simulation = await start_peers(nursery, edge.port)
        await bridge.wait_for(lambda: len(bridge.records(event_type="connected")) == PEERS, timeout=60)
        assert edge.runtime.health.ready
        began = trio.current_time()
        await edge.stop()
        took = trio.current_time() - began
        assert not edge.runtime.health.accepting
        with trio.fail_after(5):
            while sum(simulation.stats.stream_endings.values()) < PEERS:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert took < 0.5
    lifecycle = collections.Counter((event, reason) for _peer, event, reason in bridge.lifecycle())
    assert lifecycle == {("connected", None): PEERS, ("disconnected", "shutdown"): PEERS}
    assert bridge.closed_at is not None  # the bridge drained until the peer side closed the channel
    assert simulation.stats.stream_endings == {"UNAVAILABLE": PEERS}


async def test_stalled_kafka_bounds_the_drain_by_one_phase_deadline(autojump_clock):
    """Kafka takes nothing and the event buffer is full: every session's `disconnected` waits, each
    under its own SHUTDOWN_TIMEOUT_SEC, concurrently; the drain ends after one deadline, not one per
    peer, and every lost event is logged with its peer."""
    # Room for what registering puts on the channel: connected, its presence twin and the catalog.
    settings = settings_for_tests(shutdown_timeout_sec=10.0, kafka_event_buffer_size=3 * PEERS)
    bridge = MemoryBridge(stalled=True)
    with capture_logs() as logs:
        async with running_edge(settings, bridge=bridge) as edge, trio.open_nursery() as nursery:
            simulation = await start_peers(nursery, edge.port)
            with trio.fail_after(60):
                while simulation.stats.registered_now < PEERS:
                    await trio.sleep(0.01)
            began = trio.current_time()
            await edge.stop()
            took = trio.current_time() - began
            nursery.cancel_scope.cancel()
    assert settings.shutdown_timeout_sec <= took < settings.shutdown_timeout_sec + 1
    lost = [entry for entry in logs if entry["event"] == "peer_events_lost"]
    assert len(lost) == PEERS
    assert {entry["peer_id"] for entry in lost} == set(simulation.config.peer_ids())
    assert all(entry["last"]["reason"] == "shutdown" for entry in lost)


async def test_run_drains_with_the_cycle_collector_off_and_exits_with_the_heap_frozen(monkeypatch):
    """The process (`run`): the first SIGTERM turns the cycle collector off before the edge is
    cancelled, so the drain runs no full collection; once the edge has stopped the heap is frozen and
    the collector back on, so the interpreter's exit does not collect the sessions' cycles one by one.
    The edge itself is a stand-in here (the real drain is tests/ops/test_sigterm.py)."""
    seen: list[tuple[str, bool]] = []

    async def edge_standin(settings, *, raise_open_files, task_status=trio.TASK_STATUS_IGNORED):
        seen.append(("started", gc.isenabled()))
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            seen.append(("cancelled", gc.isenabled()))

    monkeypatch.setattr(nursery_module, "serve", edge_standin)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    try:
        with trio.fail_after(30):  # a bound, not a timing: it returns as soon as the signal is handled
            async with trio.open_nursery() as nursery:
                nursery.start_soon(nursery_module.run, settings_for_tests())
                await trio.testing.wait_all_tasks_blocked()  # the signal watcher listens by now
                assert seen == [("started", True)]
                os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [("started", True), ("cancelled", False)]
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()
