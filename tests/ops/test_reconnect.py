"""peer-sim's peers come back: the backoff schedule (pure, with an injected random source), the edge
choice, and in-process edges over loopback TCP under MockClock (the edges' timers and the peers'
backoff take no wall-clock time; an in-memory Kafka bridge per edge, docs/design.md#mock-clock-real-io)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import pytest
import trio

from edge.config import settings_for_tests
from edge.tools import peer_sim
from edge.tools.peer_sim import PeerSimulation, SimConfig
from edge.tools.reconnect import Backoff, EdgeChooser
from testing.harness import MemoryBridge, running_edge


def test_backoff_doubles_to_the_cap_with_full_jitter():
    """The ceiling doubles per attempt from 0.5 s to the 30 s cap; each delay is random() times it."""
    top = Backoff(random=lambda: 1.0)
    assert [top.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    half = Backoff(initial=1.0, cap=5.0, random=lambda: 0.5)
    assert [half.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 2.5, 2.5]
    assert Backoff(random=lambda: 0.0).next_delay() == 0.0  # full jitter: a delay can be nothing


def test_backoff_after_a_session_resets_or_grows_and_waits_long_after_replaced():
    draws = itertools.cycle([0.25])
    backoff = Backoff(random=lambda: next(draws))
    assert [backoff.after_session("UNAVAILABLE", registered=False) for _ in range(3)] == [0.125, 0.25, 0.5]
    # A session that registered resets the schedule: an edge that restarts gets its peers back at once.
    assert backoff.after_session("UNAVAILABLE", registered=True) == 0.125
    assert backoff.after_session(None, registered=True) == 0.125  # connection lost, no status
    # Replaced (ABORTED): between half and all of the cap, and the next failure stays at the cap.
    assert backoff.after_session("ABORTED", registered=True) == 15 + 0.25 * 15
    assert backoff.ceiling() == 30 and backoff.next_delay() == 7.5
    assert Backoff(random=lambda: 0.999).after_session("ABORTED", registered=False) == pytest.approx(29.985)


def test_edge_choice_round_robin_from_a_start_or_random():
    addresses = [("a", 1), ("b", 2), ("c", 3)]
    chooser = EdgeChooser(addresses, start=1)
    assert [chooser.choose() for _ in range(4)] == [("b", 2), ("c", 3), ("a", 1), ("b", 2)]
    draws = iter([0.0, 0.5, 0.99])
    randomly = EdgeChooser(addresses, "random", random=lambda: next(draws))
    assert [randomly.choose() for _ in range(3)] == [("a", 1), ("b", 2), ("c", 3)]
    with pytest.raises(ValueError):
        EdgeChooser([])
    with pytest.raises(ValueError):
        EdgeChooser(addresses, "sticky")


async def until(condition: Callable[[], bool]) -> None:
    """Wait (MockClock time) for what the edge has done to reach the simulated peers."""
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.01)


def connected(bridge: MemoryBridge) -> list[str]:
    return [r.value["peer_id"] for r in bridge.records(event_type="connected")]


def settings(edge_id: str) -> object:
    return settings_for_tests(edge_id=edge_id, shutdown_timeout_sec=5.0)


async def test_peers_of_a_stopped_edge_come_back_on_the_other(autojump_clock):
    """Six peer-sim peers spread round-robin over edges A and B (three each); A stops: its peers see
    UNAVAILABLE, back off (a random part of 0.5 s, since they had registered) and reconnect to the next
    address, B, which then holds all six."""
    bridge_a, bridge_b = MemoryBridge(), MemoryBridge()
    async with (
        running_edge(settings("edge-a"), bridge=bridge_a) as edge_a,
        running_edge(settings("edge-b"), bridge=bridge_b) as edge_b,
        trio.open_nursery() as nursery,
    ):
        config = SimConfig(
            edges=(("127.0.0.1", edge_a.port), ("127.0.0.1", edge_b.port)),
            tls=False,
            peers=6,
            connect_rate=0,
            catalog_size=1,
            progress_interval=0,
        )
        simulation = PeerSimulation(config)
        nursery.start_soon(simulation.run)
        await bridge_b.wait_for(lambda: len(connected(bridge_b)) == 3)
        await bridge_a.wait_for(lambda: len(connected(bridge_a)) == 3)
        on_a = set(connected(bridge_a))
        assert simulation.stats.connections == {f"127.0.0.1:{edge_a.port}": 3, f"127.0.0.1:{edge_b.port}": 3}
        stopped_at = trio.current_time()
        await edge_a.stop()
        await bridge_b.wait_for(lambda: len(connected(bridge_b)) == 6)
        came_back_after = trio.current_time() - stopped_at
        assert on_a <= set(connected(bridge_b)) and len(set(connected(bridge_b))) == 6
        assert came_back_after < 1.5  # two draws of at most 0.5 s each (stream, then connection), plus the drain
        await until(lambda: simulation.stats.registered_now == 6)  # the last responses are on their way
        assert simulation.stats.stream_endings["UNAVAILABLE"] == 3
        simulation.stop()
        await simulation.wait_stopping()
        nursery.cancel_scope.cancel()


async def test_a_replaced_peer_waits_at_least_half_the_cap(autojump_clock):
    """Another process registers the same peer id: the first one's stream ends ABORTED and it waits
    15-30 s (not the usual fraction of a second) before taking its id back, so two copies of a peer
    do not take each other over in a tight loop."""
    bridge = MemoryBridge()
    async with running_edge(settings("edge-r"), bridge=bridge) as edge, trio.open_nursery() as nursery:
        base = SimConfig(
            host="127.0.0.1", port=edge.port, tls=False, peers=1, id_prefix="dup", connect_rate=0, progress_interval=0
        )
        first = PeerSimulation(base)
        nursery.start_soon(first.run)
        await bridge.wait_for(lambda: len(connected(bridge)) == 1)
        second = PeerSimulation(attrs.evolve(base, reconnect=False))
        nursery.start_soon(second.run)
        await bridge.wait_for(lambda: len(connected(bridge)) == 2)
        replaced_at = trio.current_time()
        await bridge.wait_for(lambda: len(connected(bridge)) == 3, timeout=60)
        assert 15 <= trio.current_time() - replaced_at <= 31
        await until(lambda: first.stats.registrations == 2)
        assert first.stats.stream_endings["ABORTED"] == 1
        assert second.stats.stream_endings["ABORTED"] == 1  # taken back; it does not reconnect
        first.stop()
        await first.wait_stopping()
        nursery.cancel_scope.cancel()


@attrs.define
class _SilentStream:
    """A stream whose edge never answers the registration (it accepts the stream and says nothing)."""

    sent: list[bytes] = attrs.field(factory=list)
    status: int | None = None
    status_name: str | None = None
    local_closed: bool = False
    cancelled: bool = False

    async def send_message(self, data: bytes) -> None:
        self.sent.append(data)

    async def receive_message(self) -> bytes | None:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def cancel(self) -> None:
        self.cancelled = True


@attrs.define
class _SilentConnection:
    stream: _SilentStream = attrs.field(factory=_SilentStream)

    async def open_stream(self, path: str, metadata: object) -> _SilentStream:
        return self.stream


async def test_a_registration_that_times_out_counts_as_a_failure(autojump_clock):
    """The edge never answers the registration: after REGISTRATION_TIMEOUT (MockClock time) the session
    ends as a failed registration (no UnboundLocalError), the stream is cancelled and counted."""
    simulation = PeerSimulation(SimConfig(tls=False, peers=1))
    connection = _SilentConnection()
    began = trio.current_time()
    registered, status = await simulation._session(connection, "silent", [])  # type: ignore[arg-type]
    assert (registered, status) == (False, None)
    assert trio.current_time() - began >= peer_sim.REGISTRATION_TIMEOUT
    assert len(connection.stream.sent) == 1 and connection.stream.cancelled
    assert simulation.stats.registration_failures == 1
    assert simulation.stats.stream_endings == {"CANCELLED": 1}
