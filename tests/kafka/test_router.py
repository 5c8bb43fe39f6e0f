"""The command router under MockClock, with an in-memory stand-in for the peer registry.

Rules: these tests claim retry timing, ordering and bounds of the router's own logic, so they use a
fake registry/session with the real API (`lookup`, `offer`, `Delivery`) and `autojump_clock`; no
Kafka and no gRPC here (the real thing is covered in test_bridge_kafka.py). Times are exact: each
expected instant is computed from the same seeded random source the router draws from.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from edge.config import settings_for_tests
from edge.handoff import Delivery, SessionGone, open_event_channel
from edge.kafka.backoff import RetryPolicy
from edge.kafka.commands import Command, CommandParser, Source
from edge.kafka.offsets import OffsetTracker
from edge.kafka.router import CommandRouter
from edge.ops.metrics import EdgeMetrics
from edge.records import OutboundRecord

WALL0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
PARTITION = ("edge-commands-e1", 0)


class FakeSession:
    """A session's offer/settle contract: a bounded queue; writes happen when the test says, or at once."""

    def __init__(self, *, capacity: int = 32, auto_write: bool = True, full: bool = False) -> None:
        self.capacity = capacity
        self.auto_write = auto_write
        self.full = full
        self.gone = False
        self.offered: list[Delivery] = []
        self.written: list[str] = []

    def offer(self, delivery: Delivery) -> None:
        if self.gone:
            raise SessionGone("peer")
        if self.full or sum(not d.settled for d in self.offered) >= self.capacity:
            raise trio.WouldBlock
        self.offered.append(delivery)
        if self.auto_write:
            self.write(delivery)

    def write(self, delivery: Delivery) -> None:
        self.written.append(delivery.message.request_id)
        delivery.settle(True)

    def end(self) -> None:
        self.gone = True
        for delivery in self.offered:
            delivery.settle(False)


class FakeDirectory:
    def __init__(self) -> None:
        self.sessions: dict[str, FakeSession] = {}
        self.lookups: list[tuple[str, float]] = []

    def lookup(self, peer_id: str) -> FakeSession | None:
        self.lookups.append((peer_id, trio.current_time()))
        return self.sessions.get(peer_id)

    def attempts(self, peer_id: str) -> list[float]:
        return [t for p, t in self.lookups if p == peer_id]


class Harness:
    def __init__(self, router: CommandRouter, directory: FakeDirectory, letters, tracker: OffsetTracker, t0: float):
        self.router = router
        self.directory = directory
        self.letters = letters
        self.tracker = tracker
        self.t0 = t0
        self._offset = 0
        self.parser = CommandParser(max_message_bytes=1 << 20)

    def wall(self) -> datetime.datetime:
        return WALL0 + datetime.timedelta(seconds=trio.current_time() - self.t0)

    def submit(self, peer_id: str, request_id: str, expires_in: float | None = None) -> None:
        document = {"peer_id": peer_id, "command_type": "file_delete", "command_data": {"catalog_uuids": []}, "request_id": request_id}
        if expires_in is not None:
            document["expires_at"] = (self.wall() + datetime.timedelta(seconds=expires_in)).isoformat()
        offset = self._offset
        self._offset += 1
        command = self.parser.parse(json.dumps(document).encode(), Source(*PARTITION, offset), self.wall())
        assert isinstance(command, Command)
        self.router.submit(command, self.tracker.read(PARTITION, offset))

    async def next_letter(self) -> dict:
        """The next dead letter, acknowledged as the producer would once the broker took it."""
        record: OutboundRecord = await self.letters.receive()
        assert record.on_ack is not None
        record.on_ack()
        return dict(record.value)


async def start(nursery: trio.Nursery, seed: int = 1, **overrides) -> Harness:
    settings = settings_for_tests(edge_id="e1", **overrides)
    directory = FakeDirectory()
    send, receive = open_event_channel(100, 64 * 1024 * 1024)
    tracker = OffsetTracker()
    tracker.assign(PARTITION)
    harness: Harness
    router = CommandRouter(
        settings,
        directory,
        send,
        tracker.settle,
        lambda: harness.wall(),
        random=random.Random(seed).random,
        metrics=EdgeMetrics.create(),
    )
    harness = Harness(router, directory, receive, tracker, trio.current_time())
    await nursery.start(router.serve)
    return harness


def expected_instants(seed: int, count: int, **overrides) -> Iterator[float]:
    """Attempt times of one command from t=0: 0, d0, d0+d1, ... with the router's draws."""
    policy = RetryPolicy.from_settings(settings_for_tests(**overrides))
    draws = random.Random(seed)
    t = 0.0
    for n in range(count):
        yield t
        t += policy.delay(n, draws.random())


async def test_retries_then_dead_letter_for_a_peer_that_never_comes(autojump_clock):
    """1 + RETRY_MAX_RETRIES attempts at the formula's instants, then peer_not_connected with attempts."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, seed=11)
        h.submit("ghost", "r-1")
        letter = await h.next_letter()
        expected = list(expected_instants(11, 4))
        assert [t - h.t0 for t in h.directory.attempts("ghost")] == pytest.approx(expected, abs=1e-9)
        assert trio.current_time() - h.t0 == pytest.approx(expected[-1], abs=1e-9)
        assert letter["reason"] == "peer_not_connected" and letter["attempts"] == 4
        assert letter["request_id"] == "r-1" and (letter["partition"], letter["offset"]) == (0, 0)
        assert h.tracker.due_commits() == {PARTITION: (1, "")}  # settled by the dead letter's ack
        nursery.cancel_scope.cancel()


async def test_peer_connecting_during_retries_gets_the_command(autojump_clock):
    """The peer registers between the second and third attempt: the third attempt delivers."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, seed=5)
        h.submit("late", "r-1")
        instants = list(expected_instants(5, 3))
        await trio.sleep((instants[1] + instants[2]) / 2)
        session = h.directory.sessions["late"] = FakeSession()
        await trio.sleep(instants[2] - trio.current_time() + h.t0 + 0.001)
        assert session.written == ["r-1"]
        assert [t - h.t0 for t in h.directory.attempts("late")] == pytest.approx(instants, abs=1e-9)
        assert h.router.stats.delivered == 1 and h.router.waiting == 0
        assert h.tracker.due_commits() == {PARTITION: (1, "")}
        with pytest.raises(trio.WouldBlock):
            h.letters.receive_nowait()
        nursery.cancel_scope.cancel()


async def test_commands_for_one_peer_stay_in_order_and_others_are_not_held_up(autojump_clock):
    """A peer that is away delays only its own line; each peer gets its commands in topic order."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, retry_max_retries=10)
        online = h.directory.sessions["online"] = FakeSession()
        for i in range(3):
            h.submit("away", f"a{i}")
            h.submit("online", f"o{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert online.written == ["o0", "o1", "o2"] and trio.current_time() == h.t0
        await trio.sleep(0.5)
        away = h.directory.sessions["away"] = FakeSession()
        await trio.sleep(2)
        assert away.written == ["a0", "a1", "a2"]
        assert h.tracker.due_commits() == {PARTITION: (6, "")}
        nursery.cancel_scope.cancel()


async def test_waiting_commands_of_a_peer_that_is_away_share_one_retry_span(autojump_clock):
    """Three commands for an absent peer are all dead-lettered after one span, not three."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, seed=2, retry_jitter_factor=0.0)
        for i in range(3):
            h.submit("ghost", f"r{i}")
        letters = [await h.next_letter() for _ in range(3)]
        assert [letter["request_id"] for letter in letters] == ["r0", "r1", "r2"]
        assert {letter["attempts"] for letter in letters} == {4}
        assert trio.current_time() - h.t0 == pytest.approx(0.1 + 0.2 + 0.4)
        nursery.cancel_scope.cancel()


async def test_held_command_retries_at_the_capped_delay_until_it_expires(autojump_clock):
    """With expires_at a command outlives RETRY_MAX_RETRIES, retried at the capped delay, then `expired`."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, retry_jitter_factor=0.0)
        h.submit("ghost", "r-held", expires_in=5.0)
        await trio.sleep(4.9)
        assert h.router.held == 1
        letter = await h.next_letter()
        assert trio.current_time() - h.t0 == pytest.approx(5.0)
        gaps = [b - a for a, b in zip(h.directory.attempts("ghost"), h.directory.attempts("ghost")[1:], strict=False)]
        assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])  # attempts at 0 .. 4.5 s
        assert letter["reason"] == "expired" and letter["attempts"] == 8
        assert h.router.held == 0
        nursery.cancel_scope.cancel()


async def test_held_commands_are_bounded(autojump_clock):
    """Past RETRY_MAX_HELD_COMMANDS a command that would be held is dead-lettered as delivery_failed."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, retry_max_held_commands=1)
        h.submit("ghost-1", "kept", expires_in=60)
        await trio.testing.wait_all_tasks_blocked()
        h.submit("ghost-2", "refused", expires_in=60)
        letter = await h.next_letter()
        assert (letter["request_id"], letter["reason"], letter["attempts"]) == ("refused", "delivery_failed", 1)
        assert "RETRY_MAX_HELD_COMMANDS" in letter["detail"] and h.router.held == 1
        session = h.directory.sessions["ghost-1"] = FakeSession()
        await trio.sleep(1.2)
        assert session.written == ["kept"] and h.router.held == 0
        nursery.cancel_scope.cancel()


async def test_full_outbound_channel_is_delivery_failed(autojump_clock):
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        h.directory.sessions["slow"] = FakeSession(full=True)
        h.submit("slow", "r-1")
        letter = await h.next_letter()
        assert (letter["reason"], letter["attempts"]) == ("delivery_failed", 4)
        assert "outbound queue" in letter["detail"]
        nursery.cancel_scope.cancel()


async def test_a_write_that_times_out_is_awaited_again_not_offered_twice(autojump_clock):
    """A slow write counts as a failed attempt, but the same Delivery is awaited next time: no duplicate."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, retry_max_retries=5)
        session = h.directory.sessions["slow"] = FakeSession(auto_write=False)
        h.submit("slow", "r-1")
        await trio.sleep(7.0)  # past the 5 s write timeout of the first attempt
        assert len(session.offered) == 1 and h.router.stats.retries == 1
        session.write(session.offered[0])
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2.0)
        assert len(session.offered) == 1 and session.written == ["r-1"]
        assert h.router.stats.delivered == 1 and h.tracker.due_commits() == {PARTITION: (1, "")}
        nursery.cancel_scope.cancel()


async def test_session_ending_before_the_write_retries_on_the_next_session(autojump_clock):
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        first = h.directory.sessions["p"] = FakeSession(auto_write=False)
        h.submit("p", "r-1")
        await trio.testing.wait_all_tasks_blocked()
        first.end()
        second = h.directory.sessions["p"] = FakeSession()
        await trio.sleep(0.5)
        assert second.written == ["r-1"] and first.written == []
        nursery.cancel_scope.cancel()


async def test_max_workers_bounds_one_peers_commands_in_flight(autojump_clock):
    """GRPC_MAX_WORKERS=2: a peer has at most two commands offered and not yet written; the next two
    are offered as soon as those are written, in order."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, grpc_max_workers=2)
        session = h.directory.sessions["p"] = FakeSession(auto_write=False)
        for i in range(5):
            h.submit("p", f"r{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert [d.message.request_id for d in session.offered] == ["r0", "r1"]
        assert h.router.deliveries_in_progress == 2
        for _ in range(3):
            for delivery in [d for d in session.offered if not d.settled]:
                session.write(delivery)
            await trio.testing.wait_all_tasks_blocked()
        assert session.written == ["r0", "r1", "r2", "r3", "r4"]
        assert len(session.offered) == 5 and h.tracker.due_commits()[PARTITION][0] == 5
        nursery.cancel_scope.cancel()


async def test_commands_to_many_peers_are_all_in_flight_at_once(autojump_clock):
    """No bound is shared between peers: with GRPC_MAX_WORKERS=2, five peers each get their command
    offered at once, whatever the others' writes are doing."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, grpc_max_workers=2)
        sessions = [FakeSession(auto_write=False) for _ in range(5)]
        for i, session in enumerate(sessions):
            h.directory.sessions[f"p{i}"] = session
            h.submit(f"p{i}", f"r{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert [len(s.offered) for s in sessions] == [1] * 5 and h.router.deliveries_in_progress == 5
        for session in sessions:
            session.write(session.offered[0])
        await trio.testing.wait_all_tasks_blocked()
        assert h.router.deliveries_in_progress == 0 and h.tracker.due_commits()[PARTITION][0] == 5
        nursery.cancel_scope.cancel()


async def test_a_session_ending_midway_through_a_run_retries_the_rest_in_order(autojump_clock):
    """Three commands offered at once; the session writes the first and ends. The first is settled,
    the other two go to the next session, in order, and nothing is written twice."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        first = h.directory.sessions["p"] = FakeSession(auto_write=False)
        for i in range(3):
            h.submit("p", f"r{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert len(first.offered) == 3
        first.write(first.offered[0])
        first.end()
        await trio.testing.wait_all_tasks_blocked()
        assert h.tracker.due_commits()[PARTITION][0] == 1  # r0 settled, r1 not
        second = h.directory.sessions["p"] = FakeSession()
        await trio.sleep(1.0)
        assert first.written == ["r0"] and second.written == ["r1", "r2"]
        assert h.tracker.due_commits()[PARTITION][0] == 3 and h.router.stats.retries == 2
        nursery.cancel_scope.cancel()


async def test_a_run_whose_write_timed_out_is_awaited_not_offered_again(autojump_clock):
    """A slow peer: the run's writes take longer than the write timeout. The next attempt waits for
    the same offers; each command reaches the peer once, in order."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, retry_max_retries=10)
        session = h.directory.sessions["p"] = FakeSession(auto_write=False)
        for i in range(3):
            h.submit("p", f"r{i}")
        await trio.sleep(7.0)  # past the 5 s write timeout: one failed attempt, a retry scheduled
        assert h.router.stats.retries >= 1 and h.tracker.due_commits()[PARTITION][0] == 0
        for delivery in list(session.offered):
            session.write(delivery)
        await trio.sleep(30.0)
        assert session.written == ["r0", "r1", "r2"] and len(session.offered) == 3
        assert h.tracker.due_commits()[PARTITION][0] == 3 and h.router.stats.dead_lettered == {}
        nursery.cancel_scope.cancel()


async def test_abandon_drops_waiting_commands_without_settling(autojump_clock):
    async with trio.open_nursery() as nursery:
        h = await start(nursery, retry_max_retries=100)
        h.submit("ghost", "r-1")
        h.submit("ghost", "r-2", expires_in=30)
        await trio.sleep(1)
        assert h.router.abandon([PARTITION]) == 2
        await trio.sleep(60)
        assert h.router.waiting == 0 and h.router.held == 0
        assert h.tracker.due_commits() == {PARTITION: (0, "")}  # nothing settled: the next owner rereads
        with pytest.raises(trio.WouldBlock):
            h.letters.receive_nowait()
        nursery.cancel_scope.cancel()
