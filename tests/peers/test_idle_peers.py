"""Thousands of idle peers under MockClock: exact heartbeats and timeouts from one timers task, and
what an idle peer costs in tasks (docs/peers.md#life-of-a-stream, edge/timers.py).

Rules: `autojump_clock`; sessions served over a minimal in-memory stream where the transport is not the
point (5,000 of them), the real transport (tests/peers/support.py) where it is; tasks counted with
`trio.lowlevel` introspection, never estimated; no real-clock sleeps.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio
import trio.testing

from edge.config import settings_for_tests
from edge.grpc import Status, StatusCode
from edge.ops.metrics import EdgeMetrics
from edge.peers import protocol
from edge.peers.protocol import Registration, SessionInfo
from edge.peers.session import Session
from edge.proto import pb
from edge.handoff import EventSender, open_event_channel
from edge.records import DisconnectReason
from edge.timers import Timers, serve_timers

from .support import capture_logs, fixed_now, memory_edge

HEARTBEAT = 10
TIMEOUT = 25
SETTINGS = settings_for_tests(heartbeat_interval_sec=HEARTBEAT, peer_timeout_sec=TIMEOUT)
PEERS = 5000


def descendants(nursery: trio.Nursery) -> int:
    """Tasks running under `nursery`, at any depth."""
    count = 0
    for task in nursery.child_tasks:
        count += 1
        for child in task.child_nurseries:
            count += descendants(child)
    return count


class IdleStream:
    """What a Session uses of a ServerStream: messages in from a channel, messages out timestamped."""

    def __init__(self) -> None:
        self.inbound, self._receive = trio.open_memory_channel[bytes | None](1)
        self.sent: list[tuple[float, str | None]] = []

    def on_terminated(self, callback: Any) -> None:
        pass

    async def receive_message(self) -> bytes | None:
        return await self._receive.receive()

    async def send_message(self, data: bytes) -> None:
        await self.send_messages([data])

    async def send_messages(self, messages: list[bytes], sent: Any = None) -> None:
        for index, data in enumerate(messages):
            self.sent.append((trio.current_time(), pb.EdgeMessage.FromString(data).WhichOneof("payload")))
            if sent is not None:
                sent(index)


class Peer:
    def __init__(self, name: str, timers: Timers, events: EventSender, metrics: Any) -> None:
        info = SessionInfo(edge_id="edge-test", peer_id=name, session_id=str(uuid.uuid4()), epoch=1)
        registration = Registration(peer_id=name, catalog_uuids=(), request_id="r")
        self.registration = registration
        self.session = Session(
            info=info,
            settings=SETTINGS,
            events=events,
            now=fixed_now,
            greeting=protocol.registration_accepted(registration, info, SETTINGS),
            metrics=metrics,
            timers=timers,
        )
        self.stream = IdleStream()
        self.started_at = self.ended_at = -1.0
        self.status: Status | None = None

    async def serve(self) -> None:
        self.started_at = trio.current_time()
        self.status = await self.session.serve(self.stream, self.registration)  # type: ignore[arg-type]
        self.ended_at = trio.current_time()

    def beats(self) -> list[float]:
        return [at for at, kind in self.stream.sent if kind == "heartbeat"]


def expected_beats(start: float, until: float) -> list[float]:
    """Beat times as the edge computes them: start + interval, then each previous beat + interval."""
    beats, beat = [], start + HEARTBEAT
    while beat < until:
        beats.append(beat)
        beat += HEARTBEAT
    return beats


@pytest.mark.slow
async def test_five_thousand_idle_sessions_each_end_at_exactly_their_deadline(autojump_clock: Any) -> None:
    """5,000 sessions registered over 6 s: two tasks each (reader, writer) and one timers task for all.
    The silent ones end at exactly start + PEER_TIMEOUT_SEC after exactly two heartbeats; every third
    one speaks once at t0+12 and ends at exactly t0+12 + PEER_TIMEOUT_SEC after three."""
    timers = Timers()
    metrics = EdgeMetrics.create("edge-test")
    events, records = open_event_channel(2 * PEERS, 64 * 1024 * 1024)
    peers: list[Peer] = []
    with capture_logs() as logs:
        async with trio.open_nursery() as outer:
            await outer.start(serve_timers, timers)
            t0 = trio.current_time()
            async with trio.open_nursery() as sessions:
                for n in range(PEERS):
                    if n % 100 == 0 and n:
                        await trio.sleep(0.125)
                    peer = Peer(f"peer-{n}", timers, events, metrics)
                    peers.append(peer)
                    sessions.start_soon(peer.serve)
                await trio.testing.wait_all_tasks_blocked()
                assert descendants(sessions) == 2 * PEERS
                assert len(timers) == 2 * PEERS  # a heartbeat and a silence check each
                await trio.sleep_until(t0 + 12)
                talkers = peers[::3]
                for peer in talkers:
                    peer.stream.inbound.send_nowait(pb.PeerMessage(heartbeat=pb.Heartbeat()).SerializeToString())
            outer.cancel_scope.cancel()
    timed_out = [entry["peer_id"] for entry in logs if entry["event"] == "peer_timed_out"]
    assert sorted(timed_out) == sorted(peer.session.info.peer_id for peer in peers)
    assert len(timers) == 0  # every session took its timers with it
    spoke = {id(peer) for peer in talkers}
    for peer in peers:
        assert peer.session.end_reason is DisconnectReason.TIMEOUT
        assert peer.status is not None
        assert (peer.status.status_code, peer.status.status_message) == (
            StatusCode.DEADLINE_EXCEEDED,
            f"no message from the peer in {TIMEOUT} s",
        )
        expected_end = (t0 + 12 if id(peer) in spoke else peer.started_at) + TIMEOUT
        assert peer.ended_at == expected_end, peer.session.info.peer_id
        assert peer.beats() == expected_beats(peer.started_at, expected_end)
        assert len(peer.beats()) == (3 if id(peer) in spoke else 2)
    assert records.queued() == PEERS  # each full catalog, nothing lost


async def test_an_idle_peer_costs_four_tasks_end_to_end(autojump_clock: Any) -> None:
    """Through the real transport: per idle peer, the connection's reader and writer, the stream's
    handler (the session's reader) and the session's writer; nothing per peer times anything."""
    count = 200
    async with memory_edge(SETTINGS) as edge:
        connections = edge._connections
        assert connections is not None
        peers = [await edge.connect() for _ in range(count)]
        for n, peer in enumerate(peers):
            await peer.register(f"idle-{n}")
        for peer in peers:
            await peer.wait_kind("registration_response")
        await trio.testing.wait_all_tasks_blocked()
        assert len(edge.registry) == count
        assert descendants(connections) == 4 * count
        assert len(edge.timers) == 2 * count
        await trio.sleep(HEARTBEAT * 2 + 1)
        assert all(len(peer.arrivals("heartbeat")) == 2 for peer in peers)
