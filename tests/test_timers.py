"""The edge's timers (edge/timers.py): the sans-IO heap without an event loop, then its Trio shell.

Rules: the core is driven by explicit `now` values, no loop; the shell runs under `autojump_clock` or
`mock_clock`, never the real clock.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from edge.timers import COMPACT_AFTER, Timers, serve_timers


def recorder(calls: list[tuple[str, float]], name: str, every: float | None = None) -> Any:
    def callback(deadline: float) -> float | None:
        calls.append((name, deadline))
        return None if every is None else deadline + every

    return callback


# ------------------------------------------------------------------------------------------ sans-IO


def test_due_timers_fire_in_deadline_order_then_scheduling_order() -> None:
    """`fire_due(now)` calls exactly the timers due at `now`, earliest first; ties keep their order."""
    timers = Timers()
    calls: list[tuple[str, float]] = []
    for name, deadline in (("c", 3.0), ("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("late", 9.0)):
        timers.schedule(deadline, recorder(calls, name))
    assert timers.next_deadline == 1.0
    assert timers.fire_due(0.999) == 0 and calls == []
    assert timers.fire_due(3.0) == 4
    assert calls == [("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("c", 3.0)]
    assert len(timers) == 1 and timers.next_deadline == 9.0


def test_a_periodic_timer_rearms_from_its_deadline_and_never_drifts() -> None:
    """A callback returning `deadline + 10` is called at 10, 20, 30 even when fired late."""
    timers = Timers()
    calls: list[tuple[str, float]] = []
    timers.schedule(10.0, recorder(calls, "beat", every=10.0))
    timers.fire_due(10.0)
    timers.fire_due(27.5)  # late: the 20 s beat, and the 30 s beat stays at 30
    assert timers.next_deadline == 30.0
    timers.fire_due(30.0)
    assert calls == [("beat", 10.0), ("beat", 20.0), ("beat", 30.0)]


def test_a_deadline_still_due_after_rearming_waits_for_the_next_call() -> None:
    """A timer re-armed to a deadline already past is not called twice in one `fire_due`."""
    timers = Timers()
    calls: list[tuple[str, float]] = []
    timers.schedule(1.0, recorder(calls, "x", every=1.0))
    assert timers.fire_due(100.0) == 1
    assert timers.fire_due(100.0) == 1
    assert calls == [("x", 1.0), ("x", 2.0)]


def test_a_cancelled_timer_never_fires_and_holds_no_callback() -> None:
    """Cancelling drops the callback at once (an ended session is not kept by the heap); cancelling
    twice, or from another timer's callback in the same batch, is harmless."""
    timers = Timers()
    calls: list[tuple[str, float]] = []
    victim = timers.schedule(2.0, recorder(calls, "victim"))
    timers.schedule(1.0, lambda _: victim.cancel())
    gone = timers.schedule(1.5, recorder(calls, "gone"))
    gone.cancel()
    gone.cancel()
    assert not gone.active and len(timers) == 2
    timers.fire_due(5.0)
    assert calls == [] and len(timers) == 0 and timers.next_deadline == float("inf")


def test_cancelled_entries_are_compacted_once_they_outnumber_live_ones() -> None:
    timers = Timers()
    keep = [timers.schedule(float(n), recorder([], "k")) for n in range(10)]
    doomed = [timers.schedule(1000.0 + n, recorder([], "d")) for n in range(3 * COMPACT_AFTER)]
    for timer in doomed:
        timer.cancel()
    assert len(timers) == len(keep)
    assert len(timers._heap) < 2 * COMPACT_AFTER  # compacted along the way


def test_a_failing_callback_is_logged_and_dropped_and_the_others_fire() -> None:
    timers = Timers()
    calls: list[tuple[str, float]] = []

    def broken(deadline: float) -> float | None:
        raise RuntimeError("bug")

    timers.schedule(1.0, broken)
    timers.schedule(1.0, recorder(calls, "fine"))
    with capture_logs() as logs:
        assert timers.fire_due(1.0) == 2
    assert calls == [("fine", 1.0)] and len(timers) == 0
    assert [entry["event"] for entry in logs] == ["timer_failed"]


# ------------------------------------------------------------------------------------------ Trio shell


async def test_serve_timers_fires_at_exactly_each_deadline(mock_clock: Any) -> None:
    """Timers scheduled before and while the task sleeps (earlier ones wake it) fire at their exact
    Trio time, not a millisecond before."""
    timers = Timers()
    fired: list[tuple[str, float]] = []

    def at(name: str) -> Any:
        return lambda deadline: fired.append((name, trio.current_time())) or None

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_timers, timers)
        t0 = trio.current_time()
        timers.schedule(t0 + 50, at("late"))
        await trio.testing.wait_all_tasks_blocked()
        timers.schedule(t0 + 5, at("early"))  # earlier than the sleep: moves it in
        mock_clock.jump(4.999)
        await trio.testing.wait_all_tasks_blocked()
        assert fired == []
        mock_clock.jump(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert fired == [("early", t0 + 5)]
        mock_clock.jump(45)
        await trio.testing.wait_all_tasks_blocked()
        assert fired == [("early", t0 + 5), ("late", t0 + 50)]
        nursery.cancel_scope.cancel()
    assert timers.on_earlier is None


async def test_one_timers_heap_is_served_by_one_task(autojump_clock: Any) -> None:
    timers = Timers()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_timers, timers)
        with pytest.raises(RuntimeError):
            await serve_timers(timers)
        nursery.cancel_scope.cancel()
