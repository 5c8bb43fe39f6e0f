"""The shared inbound budget without a loop: `InboundBudget`'s books and its FIFO of waiting connections,
and what `GrpcServerProtocol` acknowledges to clients while it is full (docs/security.md, "Inbound bytes").

Rules: no I/O and no Trio; each test states one property.
"""

from __future__ import annotations

from edge.grpc.events import NOT_READY
from edge.grpc.inbound_budget import InboundBudget

from .test_protocol_sansio import Pair, frame, limits

STEP = 1000


def waiters(budget: InboundBudget, *keys: str) -> list[str]:
    """Queue `keys` in order; the list the budget's wake-ups append to."""
    woken: list[str] = []
    for key in keys:
        budget.wait(key, lambda key=key: woken.append(key))  # type: ignore[misc]
    return woken


# ------------------------------------------------------------------------------------------- books


def test_it_keeps_what_is_held_and_the_peak() -> None:
    budget = InboundBudget(limit=10 * STEP, step=STEP)
    budget.charge(7000)
    budget.charge(5000)
    budget.charge(-9000)
    assert (budget.held, budget.peak, budget.full) == (3000, 12000, False)


def test_only_a_connection_with_complete_messages_waits_and_only_when_full() -> None:
    """Holding nothing, or only the start of a message, a connection is always read: an idle peer is never
    held up by others' floods, and a message of any size completes."""
    budget = InboundBudget(limit=10 * STEP, step=STEP)
    budget.charge(10 * STEP)
    assert budget.must_wait(True)
    assert not budget.must_wait(False)
    budget.charge(-1)
    assert not budget.must_wait(True)


# --------------------------------------------------------------------------------------------- FIFO


def test_waiting_connections_are_woken_in_the_order_they_stopped() -> None:
    budget = InboundBudget(limit=10 * STEP, step=STEP)
    budget.charge(10 * STEP)
    woken = waiters(budget, "a", "b", "c")
    assert (woken, budget.pauses, budget.waiting) == ([], 3, 3)
    budget.charge(-STEP)  # room for one step: the first only
    assert woken == ["a"]
    budget.read_done("a")  # its read brought nothing: the step is free again, the next one goes
    assert woken == ["a", "b"]
    budget.charge(STEP)  # b's read filled the budget again
    budget.read_done("b")
    assert woken == ["a", "b"] and budget.waiting == 1


def test_room_wakes_one_connection_per_step() -> None:
    """2.5 steps of room: three connections woken, each counted as reading one step until it is done,
    so newcomers with complete messages must wait behind them."""
    budget = InboundBudget(limit=10 * STEP, step=STEP)
    budget.charge(10 * STEP)
    woken = waiters(budget, "a", "b", "c", "d")
    budget.charge(-2500)
    assert woken == ["a", "b", "c"]
    assert budget.full and budget.must_wait(True)
    for key in woken:
        budget.read_done(key)
    assert woken == ["a", "b", "c", "d"]


def test_room_smaller_than_a_step_still_wakes_one() -> None:
    """A budget smaller than one read cannot deadlock: any room wakes the first in line."""
    budget = InboundBudget(limit=STEP // 2, step=STEP)
    budget.charge(STEP // 2)
    woken = waiters(budget, "a", "b")
    budget.charge(-1)
    assert woken == ["a"]


def test_a_connection_that_leaves_the_queue_is_not_woken() -> None:
    budget = InboundBudget(limit=10 * STEP, step=STEP)
    budget.charge(10 * STEP)
    woken = waiters(budget, "a", "b")
    budget.leave("a")  # its own handler took what it held: it went on without its turn
    budget.charge(-STEP)
    assert woken == ["b"]


# ---------------------------------------------------------------------------- what the client gets


def budget_pair(budget: InboundBudget) -> Pair:
    return Pair(limits(stream_inbound_queue=16, stream_window_bytes=16 * 1024, inbound_budget=budget))  # type: ignore[arg-type]


def test_bytes_are_charged_as_they_arrive_and_released_as_they_are_taken() -> None:
    budget = InboundBudget(limit=1024 * 1024)
    pair = budget_pair(budget)
    stream_id = pair.open()
    pair.send(stream_id, frame(b"a" * 3000) + frame(b"b" * 2000))
    assert budget.held == 5000 == pair.server.inbound_buffered_bytes
    assert pair.server.holds_complete_messages
    assert pair.server.next_message(stream_id) == b"a" * 3000
    assert budget.held == 2000
    pair.server.finish(stream_id, None, response_started=False)
    assert budget.held == 0


def test_when_full_a_stream_behind_gets_no_window_until_its_messages_are_taken() -> None:
    """Another connection fills the budget; this stream's client stops after its window (nothing more is
    acknowledged, nothing is dropped), and gets the credit back as its handler takes the messages."""
    budget = InboundBudget(limit=8 * 1024)
    other = budget_pair(budget)
    other.send(other.open(), frame(b"o" * 8 * 1024))
    assert budget.full
    pair = budget_pair(budget)
    stream_id = pair.open()
    messages = [bytes([i]) * 1000 for i in range(40)]
    wire = b"".join(frame(m) for m in messages)
    sent = pair.send(stream_id, wire)
    assert sent == 16 * 1024  # one stream window, then nothing acknowledged
    assert pair.client.local_flow_control_window(stream_id) == 0
    taken: list[bytes] = []
    for _ in range(10):  # each round: the handler takes all, the client gets one window more
        while (message := pair.server.next_message(stream_id)) is not NOT_READY:
            assert isinstance(message, bytes)
            taken.append(message)
        pair.exchange()  # the queue emptied: the withheld credit went back
        if sent == len(wire):
            break
        assert pair.client.local_flow_control_window(stream_id) > 0
        sent += pair.send(stream_id, wire[sent:])
    assert sent == len(wire) and taken == messages
    assert budget.held == 8 * 1024  # the other connection's bytes only


def test_a_message_larger_than_the_room_left_still_arrives() -> None:
    """The budget is full of others' bytes; a stream with nothing queued is in the middle of a 60 KiB
    message (4 windows): it is acknowledged as it arrives, so the message completes."""
    budget = InboundBudget(limit=8 * 1024)
    other = budget_pair(budget)
    other.send(other.open(), frame(b"o" * 8 * 1024))
    pair = budget_pair(budget)
    stream_id = pair.open()
    body = b"m" * 60_000
    assert pair.send(stream_id, frame(body)) == len(body) + 5
    assert pair.server.next_message(stream_id) == body
