"""The consumer's own decisions, without a broker: the stall watch, the window, and the Trio deadline
around aiokafka calls (docs/design.md#aiokafka-hangs) against a socket that accepts and never answers."""

from __future__ import annotations

import trio
import trio_asyncio
from aiokafka import TopicPartition

import pytest

from edge.config import settings_for_tests
from edge.kafka.aio import AioConsumer, Progress
from edge.kafka.consumer import CommandIntake, Rebalance, cross, stalled_partitions
from edge.kafka.offsets import OffsetTracker
from edge.kafka.topics import ensure_topics

A, B = TopicPartition("cmd", 0), TopicPartition("cmd", 1)


def test_stall_is_records_waiting_and_no_progress():
    """Stalled: the position did not move between checks although the end offset is beyond it."""
    after = Progress(positions={A: 10, B: 5}, ends={A: 12, B: 5})
    assert stalled_partitions({A: 10, B: 5}, after) == [A]  # B has nothing waiting
    assert stalled_partitions({A: 9, B: 5}, after) == []  # A moved
    assert stalled_partitions({}, after) == []  # first check, or fetching was paused meanwhile


def test_window_counts_unsettled_records_but_not_held_ones():
    """KAFKA_MAX_PENDING_COMMANDS bounds records read and not settled; held commands have their own bound."""
    tracker = OffsetTracker()
    intake = CommandIntake(tracker, max_pending=2)
    intake.assigned(A, None)
    first, _second = tracker.read(A, 0), tracker.read(A, 1)
    assert intake.room(held=0) == 0
    assert intake.room(held=1) == 1  # one of them is held for an absent peer
    intake.settle(first)
    assert intake.room(held=0) == 1
    assert intake.revoked([A]) == {("cmd", 0): (1, "")} and intake.room(held=0) == 2


def test_revocation_commits_what_is_settled_and_abandons_the_router_s_waiting_commands():
    """The rebalance listener's view: the intake gives the commits, the router drops the rest."""
    tracker = OffsetTracker()
    router = _RouterStandIn()
    rebalance = Rebalance(CommandIntake(tracker, max_pending=10), router)  # type: ignore[arg-type]
    rebalance.assigned(A, None)
    rebalance.assigned(B, None)
    tracker.settle(tracker.read(A, 0))
    tracker.read(A, 1)
    assert rebalance.revoked([A]) == {("cmd", 0): (1, "")}
    rebalance.revoke_all()
    assert router.abandoned == [[A], [B]] and list(tracker.assigned()) == []


class _RouterStandIn:
    def __init__(self) -> None:
        self.abandoned: list[list[TopicPartition]] = []

    def abandon(self, partitions) -> int:
        self.abandoned.append(list(partitions))
        return 0


async def _silent_broker(task_status=trio.TASK_STATUS_IGNORED):
    """Accepts connections and never says a word."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []
    task_status.started(listener.getsockname()[1])
    try:
        while True:
            connection, _ = await listener.accept()
            held.append(connection)
    finally:
        for connection in held:
            connection.close()
        listener.close()


@pytest.mark.parametrize("call", ["topic check", "consumer start"])
async def test_aiokafka_calls_end_at_the_trio_deadline_when_the_broker_is_silent(call):
    """A broker that accepts and never answers cannot hold the edge: the Trio deadline ends the call
    (aiokafka's own 30 s timeout would come much later), and the asyncio side is cleaned up."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_silent_broker)
        settings = settings_for_tests(kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_request_timeout_sec=30.0)
        async with trio_asyncio.open_loop():
            began = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                if call == "topic check":
                    await ensure_topics(settings, timeout=1.0)
                else:
                    await cross(1.0, AioConsumer(settings, CommandIntake(OffsetTracker(), 10)).start)
            # the deadline, plus asyncio's cleanup (docs/design.md#trio-asyncio-late-cancel)
            assert trio.current_time() - began < 5.0
        nursery.cancel_scope.cancel()
