"""The command router following peers through presence, under MockClock (edge.kafka.router, forwarding).

Rules: the real router with an in-memory stand-in for the registry (its presence view is a real
PresenceView the test fills) and the event channel read by the test, acknowledging records as the
producer would; `autojump_clock`, the wall clock derived from Trio time. No Kafka, no gRPC (the real
thing: tests/test_fleet.py).
"""

from __future__ import annotations

import datetime
import json
import random
from typing import Any

import trio

from edge.config import settings_for_tests
from edge.handoff import Delivery, open_event_channel
from edge.kafka.commands import Command, CommandParser, Source
from edge.kafka.offsets import OffsetTracker
from edge.kafka.router import CommandRouter
from edge.ops.metrics import EdgeMetrics
from edge.presence import Holder, PresenceView

WALL0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
WALL0_MS = int(WALL0.timestamp() * 1000)
PARTITION = ("edge-commands-here", 0)
SETTINGS = settings_for_tests(edge_id="here", command_peer_grace_sec=30.0, command_max_hops=3)


class Session:
    def __init__(self) -> None:
        self.written: list[str] = []

    def offer(self, delivery: Delivery) -> None:
        self.written.append(delivery.message.request_id)
        delivery.settle(True)


class Directory:
    def __init__(self) -> None:
        self.presence = PresenceView(100)
        self.sessions: dict[str, Session] = {}

    def lookup(self, peer_id: str) -> Session | None:
        return self.sessions.get(peer_id)

    def displace(self, peer_id: str, newer: Holder) -> bool:
        return False


class Harness:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.directory = Directory()
        self.send, self.records = open_event_channel(100, 64 * 1024 * 1024)
        self.tracker = OffsetTracker()
        self.tracker.assign(PARTITION)
        self.t0 = trio.current_time()
        self.router = CommandRouter(
            SETTINGS,
            self.directory,
            self.send,
            self.tracker.settle,
            self.wall,
            random=random.Random(1).random,
            presence=self.directory.presence,
            metrics=EdgeMetrics.create(),
        )
        self.parser = CommandParser(max_message_bytes=1 << 20)
        self._offset = 0

    def wall(self) -> datetime.datetime:
        return WALL0 + datetime.timedelta(seconds=trio.current_time() - self.t0)

    def submit(self, peer_id: str, request_id: str, **extra: Any) -> None:
        document = {"peer_id": peer_id, "command_type": "file_delete", "command_data": {"catalog_uuids": []}}
        document.update(request_id=request_id, **extra)
        offset, self._offset = self._offset, self._offset + 1
        command = self.parser.parse(json.dumps(document).encode(), Source(*PARTITION, offset), self.wall())
        assert isinstance(command, Command)
        self.router.submit(command, self.tracker.read(PARTITION, offset))


async def started(nursery: trio.Nursery) -> Harness:
    harness = Harness(nursery)
    await nursery.start(harness.router.serve)
    return harness


async def test_commands_for_a_peer_on_another_edge_are_forwarded_in_order_and_settle_when_acked(
    autojump_clock: Any,
) -> None:
    """Presence: the peer is on `there`. Three commands go to `there`'s command topic, in their order,
    keyed by the peer, `hops` one more, `forwarded_from` here; none is settled before its ack."""
    async with trio.open_nursery() as nursery:
        h = await started(nursery)
        h.directory.presence.apply("p", Holder("there", 5, "s", True, WALL0_MS))
        h.submit("p", "r1")
        h.submit("p", "r2", hops=1)
        h.submit("p", "r3")
        forwarded = [await h.records.receive() for _ in range(3)]
        assert [(r.topic, r.key, r.value["request_id"], r.value["hops"]) for r in forwarded] == [
            ("edge-commands-there", "p", "r1", 1),
            ("edge-commands-there", "p", "r2", 2),
            ("edge-commands-there", "p", "r3", 1),
        ]
        assert {r.value["forwarded_from"] for r in forwarded} == {"here"}
        assert h.tracker.unsettled == 3
        for record in forwarded:
            assert record.on_ack is not None
            record.on_ack()
        assert h.tracker.unsettled == 0
        assert h.router.stats.forwarded == 3
        nursery.cancel_scope.cancel()


async def test_a_command_at_the_hop_limit_is_not_forwarded_again(autojump_clock: Any) -> None:
    """`hops` 3 of COMMAND_MAX_HOPS 3: the usual rules, dead-lettered `peer_not_connected`."""
    async with trio.open_nursery() as nursery:
        h = await started(nursery)
        h.directory.presence.apply("p", Holder("there", 5, "s", True, WALL0_MS))
        h.submit("p", "looping", hops=3)
        letter = await h.records.receive()
        assert letter.topic == SETTINGS.deadletter_topic
        assert letter.value["reason"] == "peer_not_connected"
        nursery.cancel_scope.cancel()


async def test_a_command_for_a_peer_that_just_left_waits_out_the_grace_period(autojump_clock: Any) -> None:
    """The peer went 1 s ago: its command is not dead-lettered after the ~0.8 s retry span; the peer
    comes back 10 s later and gets it. Another's peer, gone for good, is dead-lettered once the grace
    period (30 s after it went) has passed."""
    async with trio.open_nursery() as nursery:
        h = await started(nursery)
        h.directory.presence.apply("back", Holder("there", 5, "s", False, WALL0_MS - 1000))
        h.directory.presence.apply("gone", Holder("there", 5, "s", False, WALL0_MS - 1000))
        h.submit("back", "b1")
        h.submit("gone", "g1")
        await trio.sleep(10)
        session = h.directory.sessions["back"] = Session()
        await trio.sleep(1.2)  # the next retry, at most RETRY_MAX_DELAY_MS (with jitter) away
        assert session.written == ["b1"]
        letter = await h.records.receive()
        waited = trio.current_time() - h.t0
        assert letter.value["request_id"] == "g1" and letter.value["reason"] == "peer_not_connected"
        assert 29 <= waited <= 31.2
        nursery.cancel_scope.cancel()


async def test_a_held_command_follows_its_peer_when_it_reappears_on_another_edge(autojump_clock: Any) -> None:
    """A command with `expires_at`, held here for a peer nobody has; 20 s later presence sees the peer
    on `there`: the command is forwarded there at its next retry, its `expires_at` with it."""
    async with trio.open_nursery() as nursery:
        h = await started(nursery)
        expires = (WALL0 + datetime.timedelta(minutes=5)).isoformat()
        h.submit("p", "held", expires_at=expires)
        await trio.sleep(20)
        h.directory.presence.apply("p", Holder("there", 5, "s", True, WALL0_MS + 20_000))
        record = await h.records.receive()
        assert trio.current_time() - h.t0 <= 21.2
        assert (record.topic, record.value["request_id"], record.value["expires_at"]) == (
            "edge-commands-there",
            "held",
            expires,
        )
        nursery.cancel_scope.cancel()
