"""The event buffer's byte budget (KAFKA_EVENT_BUFFER_BYTES, edge.handoff.EventBudget) and `send_event`
against it: who waits, who is let in when the producer releases, the record larger than the whole budget,
and cancellation (before the record is queued it raises, after it never).

Rules: MockClock (`autojump_clock`); no Kafka here (the producer's side is `EventReceiver.release`).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from edge.handoff import EventBudget, open_event_channel, send_event
from edge.ops.metrics import EdgeMetrics
from edge.records import OutboundRecord


def record(key: str, value_bytes: int) -> OutboundRecord:
    """A record whose encoded key + value is exactly len(key) + value_bytes bytes."""
    made = OutboundRecord("t", key, {"v": "x" * (value_bytes - len('{"v":""}'))})
    assert made.size == len(key) + value_bytes
    return made


def backpressure(metrics: EdgeMetrics) -> float:
    return float(metrics.event_backpressure._value.get())


def test_size_is_the_encoded_key_and_value_computed_once() -> None:
    made = OutboundRecord("t", "peer-1", {"a": "é"})
    key, value = made.encoded
    assert (key, value) == (b"peer-1", '{"a":"é"}'.encode())
    assert made.size == len(b"peer-1") + len(value)
    assert made.encoded is made.encoded  # kept: the producer sends the very bytes that were counted
    assert OutboundRecord("t", None, {"a": 1}).size == len(b'{"a":1}')
    assert OutboundRecord("t", "k", {"a": object()}).size == 0  # not encodable: the producer rejects it


async def test_a_sender_waits_while_the_bytes_are_over_the_budget_and_goes_when_released(autojump_clock: Any) -> None:
    metrics = EdgeMetrics.create()
    send, receive = open_event_channel(100, 1000)
    first, second = record("a", 599), record("b", 499)  # 600 + 500 > 1000
    await send_event(send, first, metrics)
    assert send.budget.held == 600
    queued = trio.Event()

    async def second_sender() -> None:
        await send_event(send, second, metrics)
        queued.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second_sender)
        await trio.sleep(5)  # the producer has `first` out (taken, not yet acknowledged)
        assert await receive.receive() is first
        await trio.sleep(5)
        assert not queued.is_set()  # taken is not released: it still counts until acknowledged
        assert send.budget.held == 600
        receive.release([first])
        await queued.wait()
    assert send.budget.held == 500
    assert receive.receive_nowait() is second
    assert backpressure(metrics) == pytest.approx(10)


async def test_a_record_larger_than_the_whole_budget_goes_alone(autojump_clock: Any) -> None:
    metrics = EdgeMetrics.create()
    send, receive = open_event_channel(100, 1000)
    huge, small = record("h", 4999), record("s", 9)
    await send_event(send, huge, metrics)  # nothing held: it goes, no deadlock
    assert send.budget.held == 5000
    with trio.move_on_after(10) as waited:
        await send_event(send, small, metrics)  # but nothing goes beside it
    assert waited.cancelled_caught
    assert receive.receive_nowait() is huge
    receive.release([huge])
    assert send.budget.held == 0
    await send_event(send, small, metrics)
    assert send.budget.held == 10


async def test_senders_are_let_in_in_the_order_they_came(autojump_clock: Any) -> None:
    """A large record waiting is not overtaken by small ones that would fit: otherwise a stream of small
    records could keep it out for ever."""
    metrics = EdgeMetrics.create()
    send, receive = open_event_channel(100, 1000)
    await send_event(send, record("a", 899), metrics)
    order: list[str] = []

    async def sender(key: str, size: int, delay: float) -> None:
        await trio.sleep(delay)
        await send_event(send, record(key, size), metrics)
        order.append(key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, "big", 798, 1)  # 801 bytes
        nursery.start_soon(sender, "s1", 47, 2)  # 49 bytes: would fit now (900 + 49), but "big" came first
        await trio.sleep(10)
        assert order == []
        receive.release([receive.receive_nowait()])  # 900 released: big (801) goes, then s1 (49) fits
    assert sorted(order) == ["big", "s1"]  # both let in by the same release
    assert send.budget.held == 850


async def test_cancelled_while_waiting_for_bytes_raises_holds_nothing_and_lets_the_next_in(autojump_clock: Any) -> None:
    metrics = EdgeMetrics.create()
    send, receive = open_event_channel(100, 1000)
    await send_event(send, record("a", 599), metrics)
    done: list[str] = []

    async def sender(key: str, size: int) -> None:
        await send_event(send, record(key, size), metrics)
        done.append(key)

    async def big_sender() -> None:
        with trio.move_on_after(5) as scope:
            await send_event(send, record("big", 899), metrics)
            done.append("big")
        done.append(f"big cancelled: {scope.cancelled_caught}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(big_sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(sender, "small", 95)  # 100 bytes: fits, but waits behind "big"
        await trio.sleep(1)
        assert done == []
    assert done == ["big cancelled: True", "small"]  # let in the moment "big" gave up its place
    assert send.budget.held == 700  # "big" holds nothing
    assert [receive.receive_nowait().key, receive.receive_nowait().key] == ["a", "small"]


async def test_cancelled_while_the_channel_is_full_gives_its_bytes_back(autojump_clock: Any) -> None:
    """Room by bytes, none by count: the sender waits on the channel; cancelled there it raises, and the
    bytes it was counted for are released."""
    metrics = EdgeMetrics.create()
    send, receive = open_event_channel(1, 10_000)
    await send_event(send, record("a", 99), metrics)
    with trio.move_on_after(5) as waited:
        await send_event(send, record("b", 99), metrics)
    assert waited.cancelled_caught
    assert send.budget.held == 100
    assert receive.receive_nowait().key == "a"
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_once_queued_a_cancellation_does_not_raise(autojump_clock: Any) -> None:
    """Admitted from the byte queue and queued on the channel without waiting: the send completes
    even though its scope was cancelled meanwhile (the record is in; raising would make the caller
    think it was not)."""
    metrics = EdgeMetrics.create()
    send, receive = open_event_channel(100, 1000)
    await send_event(send, record("a", 599), metrics)
    finished: list[bool] = []

    async def sender(scope: trio.CancelScope) -> None:
        with scope:
            await send_event(send, record("b", 599), metrics)
            finished.append(True)

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, scope)
        await trio.testing.wait_all_tasks_blocked()
        receive.release([receive.receive_nowait()])  # admits "b": its task is rescheduled...
        scope.cancel()  # ... and cancelled before it runs again
    assert finished == [True]
    assert receive.receive_nowait().key == "b"
    assert send.budget.held == 600


async def test_a_closed_channel_gives_the_bytes_back() -> None:
    metrics = EdgeMetrics.create()
    send, receive = open_event_channel(10, 1000)
    receive.close()
    with pytest.raises(trio.BrokenResourceError):
        await send_event(send, record("a", 99), metrics)
    assert send.budget.held == 0


def test_budget_admits_when_it_fits_or_when_empty() -> None:
    budget = EventBudget(100)
    assert budget.take_nowait(60)
    assert not budget.take_nowait(41)
    assert budget.take_nowait(40)
    budget.release(100)
    assert budget.take_nowait(1000)  # alone
    assert not budget.take_nowait(1)
