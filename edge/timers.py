"""The edge's timers: one deadline heap for every peer's heartbeats and timeouts, and the one task that
runs it.

Per-peer timing (the heartbeat the edge sends every HEARTBEAT_INTERVAL_SEC, the PEER_TIMEOUT_SEC
silence check, the PEER_HANDSHAKE_TIMEOUT_SEC registration deadline) needs neither a task nor a moving
cancel-scope deadline per peer: a session *schedules* a callback on the edge's `Timers`, and
`serve_timers`, one task per edge started by `serve_peers`, calls it at its deadline.

* `Timers` is the sans-IO core: a heap of `(deadline, seq, Timer)` tested without an event loop.
  `schedule(deadline, callback)` returns a `Timer`; `fire_due(now)` calls every callback whose deadline
  has come, in deadline order (ties in scheduling order). A callback gets the deadline it was scheduled
  for and returns the next deadline to be called again at (a periodic heartbeat: `deadline + interval`,
  so beats never drift) or None to be done. `Timer.cancel()` drops the callback at once (so an ended
  session is not kept alive by the heap); its heap entry is skipped when it comes up, and the heap is
  compacted when cancelled entries outnumber live ones.
* Lazy checks instead of moving deadlines: a peer's silence timer is not moved per message. The reader
  stamps when it starts waiting; the timer, when it fires, re-arms itself for `stamp + timeout` if the
  stamp moved on, and only ends the session if it did not. One heap operation per PEER_TIMEOUT_SEC per
  busy peer, none per message, and still exact to the deadline under MockClock.
* `serve_timers(timers)` is the Trio shell: sleeps until the earliest deadline (`trio.current_time()`,
  so MockClock drives it), fires what is due, and is woken when something earlier is scheduled.
  Cancelling it (the nursery of `serve_peers`) stops every timer; nothing else cancels it.

Callbacks run in the timers task: they must be synchronous and quick (set an event, cancel a scope,
`offer` without waiting). One failing callback is logged (`timer_failed`) and dropped; the others go on.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Final

import attrs
import structlog
import trio

log = structlog.get_logger(__name__)

#: Called with the deadline it was scheduled for; returns the next deadline, or None when done.
Callback = Callable[[float], float | None]

#: Cancelled entries kept in the heap before it may be compacted (and only once they outnumber the
#: live ones, so compaction costs O(1) amortised per cancel).
COMPACT_AFTER: Final = 1024


@attrs.define(eq=False)
class Timer:
    """One scheduled callback on `Timers`. `cancel()` it; it is never called after that."""

    deadline: float
    _callback: Callback | None
    _timers: Timers
    #: True while its entry is in the heap (a cancel then leaves a dead entry to skip).
    _queued: bool = attrs.field(default=False, init=False)

    @property
    def active(self) -> bool:
        return self._callback is not None

    def cancel(self) -> None:
        if self._callback is not None:
            self._callback = None
            if self._queued:
                self._timers._cancelled()


@attrs.define
class Timers:
    """The deadline heap. Not thread-safe; one Trio run. See the module docstring."""

    _heap: list[tuple[float, int, Timer]] = attrs.field(factory=list, init=False)
    _seq: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _dead: int = attrs.field(default=0, init=False)
    #: Told the new earliest deadline whenever one is scheduled before the current earliest
    #: (`serve_timers` moves its sleep in); None while nothing runs the heap.
    on_earlier: Callable[[float], None] | None = attrs.field(default=None, init=False)

    def __len__(self) -> int:
        """Live (scheduled, not cancelled) timers."""
        return len(self._heap) - self._dead

    @property
    def next_deadline(self) -> float:
        """The earliest deadline in the heap (perhaps of a cancelled timer), inf when empty."""
        return self._heap[0][0] if self._heap else math.inf

    def schedule(self, deadline: float, callback: Callback) -> Timer:
        """Call `callback(deadline)` at `deadline` (again at whatever it returns, until None)."""
        timer = Timer(deadline, callback, self)
        earlier = deadline < self.next_deadline
        self._push(timer)
        if earlier and self.on_earlier is not None:
            self.on_earlier(deadline)
        return timer

    def fire_due(self, now: float) -> int:
        """Call every live timer whose deadline is at or before `now`; re-arm those that ask for it
        (after this batch, so a callback that returns a deadline still due is called on the next
        `fire_due`, never in a loop here). Returns how many callbacks were called."""
        heap = self._heap
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            timer._queued = False
            if timer._callback is None:
                self._dead -= 1
            else:
                due.append(timer)
        for timer in due:
            callback = timer._callback
            if callback is None:  # cancelled by an earlier callback of this batch
                continue
            try:
                again = callback(timer.deadline)
            except Exception:  # the one boundary of the timers task: one bad callback, not every peer
                log.exception("timer_failed", callback=repr(callback))
                again = None
            if timer._callback is None:  # it cancelled itself
                continue
            if again is None:
                timer._callback = None
            else:
                timer.deadline = again
                self._push(timer)
        return len(due)

    def _push(self, timer: Timer) -> None:
        timer._queued = True
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))

    def _cancelled(self) -> None:
        self._dead += 1
        if self._dead > COMPACT_AFTER and self._dead * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2]._callback is not None]
            heapq.heapify(self._heap)
            self._dead = 0


async def serve_timers(timers: Timers, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run `timers` until cancelled: sleep until the earliest deadline, fire what is due, repeat."""
    sleep: trio.CancelScope | None = None

    def wake(deadline: float) -> None:
        if sleep is not None and deadline < sleep.deadline:
            sleep.deadline = deadline

    if timers.on_earlier is not None:
        raise RuntimeError("these timers are already being served")
    timers.on_earlier = wake
    try:
        task_status.started()
        while True:
            timers.fire_due(trio.current_time())
            with trio.CancelScope(deadline=timers.next_deadline) as sleep:
                await trio.sleep_forever()
            sleep = None
    finally:
        timers.on_earlier = None
