"""Presence, fleet-wide epochs and forwarding decisions (edge.presence, edge.kafka.forwarding).

Rules: pure functions and values, no event loop, except the last tests, which run the real handler and
registry over in-memory streams under MockClock (tests/peers/support.py) to show that a takeover seen
in presence ends the session here at once, with no timer of the edge's involved.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs
import pytest
import trio

from edge.config import settings_for_tests
from edge.grpc import StatusCode
from edge.kafka.commands import Command, CommandParser, Source
from edge.kafka.forwarding import Forward, Wait, decide, forwarded_record, hops_of
from edge.kafka.presence import apply_records, caught_up
from edge.presence import Holder, PresenceView, next_epoch, presence_entry

from tests.peers.support import memory_edge


def holder(edge: str = "a", epoch: int = 10, connected: bool = True, at_ms: int = 0, session: str = "s") -> Holder:
    return Holder(edge, epoch, session, connected, at_ms)


# ------------------------------------------------------------------------------------------- epochs


def test_an_epoch_is_the_wall_clock_unless_a_higher_one_was_seen() -> None:
    """max(wall-clock ms, highest seen + 1): a clock behind, or two sessions in one millisecond, still
    give a higher epoch."""
    assert next_epoch(1_000, None) == 1_000
    assert next_epoch(1_000, 500) == 1_000
    assert next_epoch(1_000, 1_000) == 1_001
    assert next_epoch(1_000, 5_000) == 5_001


# --------------------------------------------------------------------------------------------- view


def test_the_view_keeps_the_newest_session_of_each_peer() -> None:
    """Higher epoch wins; a stale or repeated record changes nothing; a session's `disconnected`
    follows its `connected`; equal epochs from two edges are ordered by edge id."""
    view = PresenceView(10)
    assert view.apply("p", holder("a", 10))
    assert not view.apply("p", holder("b", 9))
    assert not view.apply("p", holder("a", 10))
    assert view.apply("p", holder("a", 10, connected=False))
    assert not view.apply("p", holder("a", 10, connected=True))
    assert view.apply("p", holder("b", 10))
    assert not view.apply("p", holder("a", 10))
    got = view.get("p")
    assert got is not None and (got.edge_id, got.epoch, got.connected) == ("b", 10, True)
    assert view.highest_epoch("p") == 10
    assert view.highest_epoch("unknown") is None


def test_the_view_forgets_the_least_recently_updated_peer_at_its_bound() -> None:
    """At `max_entries` the peer updated longest ago goes; an update makes a peer recent again."""
    view = PresenceView(3)
    for peer in ("p1", "p2", "p3"):
        view.apply(peer, holder(epoch=1))
    view.apply("p1", holder(epoch=2))  # p1 is now the most recent; p2 the oldest
    view.apply("p4", holder(epoch=1))
    assert sorted(view) == ["p1", "p3", "p4"]
    assert view.evicted == 1
    assert len(view) == 3


def test_a_lifecycle_record_becomes_a_presence_entry() -> None:
    value = {"peer_id": "p", "edge_id": "e", "event_type": "disconnected", "session_id": "s", "epoch": 7, "reason": "timeout"}
    assert presence_entry(value, 123) == ("p", Holder("e", 7, "s", False, 123))
    for broken in ({**value, "epoch": "7"}, {**value, "epoch": True}, {**value, "event_type": "catalog"}, {"peer_id": "p"}):
        assert presence_entry(broken, 0) is None


# -------------------------------------------------------------------------------------- forwarding


def decision(found: Holder | None, hops: int | None = 0, now_ms: int = 100_000, started_ms: int = 0) -> Any:
    return decide(found, edge_id="here", hops=hops, max_hops=3, now_ms=now_ms, grace_ms=30_000, started_ms=started_ms)


def test_a_command_for_a_peer_on_another_edge_is_forwarded_while_it_has_hops() -> None:
    assert decision(holder("there")) == Forward("there")
    assert decision(holder("there"), hops=2) == Forward("there")
    assert decision(holder("there"), hops=3) is None  # at the hop limit: the usual rules
    assert decision(holder("there"), hops=None) is None  # a malformed `hops` never travels


def test_a_command_for_a_peer_that_just_left_waits_for_it() -> None:
    """Gone 10 s ago (here or elsewhere): wait until 30 s after it went; then the usual rules."""
    assert decision(holder("there", connected=False, at_ms=90_000)) == Wait(120_000)
    assert decision(holder("here", connected=False, at_ms=90_000)) == Wait(120_000)
    assert decision(holder("there", connected=False, at_ms=60_000)) is None
    assert decision(None) is None


def test_a_peer_presence_places_here_without_a_session_counts_as_gone_since_the_start() -> None:
    """This edge restarted: presence still says it holds the peer (its last record was `connected`),
    so the peer went when the edge started, at the earliest."""
    assert decision(holder("here", at_ms=1_000), started_ms=95_000) == Wait(125_000)
    assert decision(holder("here", at_ms=1_000), started_ms=1_000) is None


def test_hops_are_read_leniently() -> None:
    assert hops_of({}) == 0
    assert hops_of({"hops": 2}) == 2
    for bad in ({"hops": -1}, {"hops": "1"}, {"hops": True}, {"hops": 1.5}, "not a mapping"):
        assert hops_of(bad) is None


def test_a_forwarded_command_carries_its_request_id_hops_and_origin() -> None:
    parser = CommandParser(max_message_bytes=1 << 20, new_request_id=lambda: "generated")
    raw = b'{"peer_id":"p","command_type":"file_delete","command_data":{"catalog_uuids":["c"]},"hops":1,"x":2}'
    parsed = parser.parse(raw, Source("edge-commands-here", 0, 5), datetime.datetime.now(datetime.timezone.utc))
    assert isinstance(parsed, Command)
    record = forwarded_record(parsed, topic="edge-commands-there", edge_id="here", hops=1)
    assert (record.topic, record.key) == ("edge-commands-there", "p")
    assert record.value == {
        "peer_id": "p",
        "command_type": "file_delete",
        "command_data": {"catalog_uuids": ["c"]},
        "hops": 2,
        "x": 2,
        "request_id": "generated",
        "forwarded_from": "here",
    }


# --------------------------------------------------------------------------------- presence reader


def test_caught_up_means_every_partition_reached_its_start_end_offset() -> None:
    assert caught_up({"t0": 5, "t1": 3}, {"t0": 5, "t1": 3})
    assert caught_up({"t0": 6, "t1": 3}, {"t0": 5, "t1": 3})
    assert not caught_up({"t0": 5}, {"t0": 5, "t1": 3})
    assert caught_up({}, {})


@attrs.frozen
class FakeRecord:
    value: bytes | None
    timestamp: int = 0


class FakeDirectory:
    def __init__(self) -> None:
        self.presence = PresenceView(100)
        self.displaced: list[tuple[str, Holder]] = []

    def displace(self, peer_id: str, newer: Holder) -> bool:
        self.displaced.append((peer_id, newer))
        return True


def test_records_from_another_edge_displace_and_nothing_else_does() -> None:
    """Only a newer `connected` from another edge asks the directory to displace; this edge's own,
    stale, `disconnected`, broken and tombstone records do not."""
    directory = FakeDirectory()

    def record(edge: str, epoch: int, event: str = "connected") -> FakeRecord:
        text = f'{{"peer_id":"p","edge_id":"{edge}","event_type":"{event}","session_id":"s{epoch}","epoch":{epoch}}}'
        return FakeRecord(text.encode())

    records = [
        record("here", 5),
        record("there", 4),  # stale
        FakeRecord(None),
        FakeRecord(b"\xff"),
        FakeRecord(b"[1]"),
        record("there", 6),
        record("there", 6, "disconnected"),
    ]
    assert apply_records(records, directory, "here") == 1  # type: ignore[arg-type]
    assert [(p, h.edge_id, h.epoch) for p, h in directory.displaced] == [("p", "there", 6)]


# ------------------------------------------------------------------------ takeover, MockClock


SETTINGS = settings_for_tests()


async def test_a_newer_session_elsewhere_ends_the_one_here_at_once(autojump_clock: Any) -> None:
    """Presence says edge-2 has a newer session of the peer: the one here ends ABORTED at the same
    instant (no timer of the edge's: the figure over Kafka is in docs/scaling.md), with
    `disconnected(replaced)` and its own, lower epoch. An older session elsewhere changes nothing."""
    async with memory_edge(SETTINGS) as edge:
        peer = await edge.connect()
        await peer.register("mover")
        await peer.wait_kind("registration_response")
        session = edge.registry.lookup("mover")
        assert session is not None
        epoch = session.info.epoch
        assert not edge.registry.displace("mover", Holder("edge-2", epoch - 1, "older", True, 0))
        assert not edge.registry.displace("mover", Holder(SETTINGS.edge_id, epoch + 1, "self", True, 0))
        before = trio.current_time()
        assert edge.registry.displace("mover", Holder("edge-2", epoch + 1, "newer", True, 0))
        assert await peer.wait_status() == (StatusCode.ABORTED, "replaced by a newer stream for the same peer id")
        assert trio.current_time() == before
        await edge.wait_published(lambda published: len(edge.lifecycle("mover")) == 2)
        gone = edge.lifecycle("mover")[1]
        assert (gone["event_type"], gone["reason"], gone["epoch"]) == ("disconnected", "replaced", epoch)


async def test_a_session_numbered_after_a_newer_one_elsewhere_is_numbered_above_it(autojump_clock: Any) -> None:
    """Presence has seen the peer at an epoch far above this edge's clock (another edge's clock runs
    ahead): the next session here gets that epoch + 1, and the presence twin of its `connected` is
    queued for the presence topic."""
    async with memory_edge(SETTINGS) as edge:
        ahead = 10**13
        edge.registry.presence.apply("p", Holder("edge-2", ahead, "s", False, 0))
        peer = await edge.connect()
        await peer.register("p")
        await peer.wait_kind("registration_response")
        await edge.wait_published(lambda published: len(edge.lifecycle("p")) == 1)
        assert edge.lifecycle("p")[0]["epoch"] == ahead + 1
        assert [r.value for r in edge.presence] == edge.lifecycle("p")
        assert {r.topic for r in edge.presence} == {SETTINGS.kafka_peer_presence_topic}


@pytest.mark.parametrize("max_entries", [1, 2])
def test_a_bound_of_one_or_two_still_works(max_entries: int) -> None:
    view = PresenceView(max_entries)
    for index in range(5):
        view.apply(f"p{index}", holder(epoch=index))
    assert len(view) == max_entries and view.evicted == 5 - max_entries
