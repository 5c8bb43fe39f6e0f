"""`InboundBudget`: one bound on the bytes received from every client and not yet taken by the handlers,
over all streams and connections of a server (GRPC_INBOUND_BUFFER_BYTES); `ReadTurn`: a connection's
turn at reading under it.

Backpressure, never refusal: nothing is dropped and no stream is reset for the budget. While the budget
is full,

* a stream that has complete messages its handler has not taken yet gets no WINDOW_UPDATE for the bytes
  that arrive (`GrpcServerProtocol`), so its client stops after the window it already has; the credit is
  given back as the handler takes the messages;
* a connection holding such messages is not read (`ReadTurn.wait`): what its client sends meanwhile
  stays in the kernel's socket buffer. It waits in a FIFO queue; as handlers take bytes, the budget
  wakes the connections at the front, one per `step` bytes of room, each for one read of at most `step`
  bytes, after which it is judged again (and queues at the back if it must wait again). A connection whose
  own handlers take what it holds goes on at once, ahead of the queue: it is no longer part of the backlog.

A connection holding nothing, or only the beginning of a message, is always read: an idle peer's next
message is never held up by others' floods, and a message of any allowed size (GRPC_MAX_MESSAGE_BYTES)
always completes, however full the budget (the rule the event buffer has for one large event). So what
the server holds is at most the budget, plus one read per connection under way when it filled (`step`
bytes; over TLS one record, 16 KiB), plus the rest of each message being received (docs/security.md,
"Inbound bytes").

`InboundBudget` is sans-IO (wake-ups are plain callbacks); `ReadTurn` is the Trio side, one per
connection, owned by its reader task. Only the Trio thread running the server touches either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs
import trio

#: Bytes a connection asks of its socket per read, and what one woken connection may read before it is
#: judged again.
READ_STEP: Final = 64 * 1024


@attrs.define(eq=False)
class InboundBudget:
    """Bytes held for handlers over every connection sharing it; see the module docstring."""

    limit: int
    step: int = READ_STEP
    held: int = 0
    #: The most ever held at once, and how many times a connection had to wait for room.
    peak: int = 0
    pauses: int = 0
    _waiting: dict[object, Callable[[], None]] = attrs.field(factory=dict)  # insertion order: FIFO
    _resuming: set[object] = attrs.field(factory=set)  # woken, their one read not done yet

    @property
    def full(self) -> bool:
        """No room: what is held, and one step for each woken connection still reading, reach the limit."""
        return self.held + len(self._resuming) * self.step >= self.limit

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def charge(self, delta: int) -> None:
        """Held bytes grew (bytes arrived) or shrank (handlers took them, or streams ended)."""
        self.held += delta
        if delta > 0:
            self.peak = max(self.peak, self.held)
        elif delta < 0:
            self._wake()

    def must_wait(self, holds_complete_messages: bool) -> bool:
        """Whether a connection must wait before its next read."""
        return holds_complete_messages and self.full

    def wait(self, key: object, wake: Callable[[], None]) -> None:
        """Queue `key` at the back; `wake()` is called (once) when it is its turn to read."""
        self.pauses += 1
        self._waiting[key] = wake
        self._wake()

    def leave(self, key: object) -> None:
        """`key` stops waiting (it went on without its turn, or its connection ended)."""
        self._waiting.pop(key, None)

    def read_done(self, key: object) -> None:
        """`key`'s read after a wake-up is over (or will never happen): its step is free again."""
        if key in self._resuming:
            self._resuming.discard(key)
            self._wake()

    def _wake(self) -> None:
        room = self.limit - self.held - len(self._resuming) * self.step
        while self._waiting and room > 0:
            key = next(iter(self._waiting))
            wake = self._waiting.pop(key)
            self._resuming.add(key)
            room -= self.step
            wake()


class ReadTurn:
    """One connection's reads under an `InboundBudget` (None: no budget, every read at once)."""

    def __init__(
        self, budget: InboundBudget | None, holds_complete_messages: Callable[[], bool], paused: Callable[[], None]
    ) -> None:
        self._budget = budget
        self._holds = holds_complete_messages
        self._paused = paused  # told when the connection starts waiting (stats, metrics)
        self._event: trio.Event | None = None  # set while waiting

    async def wait(self) -> bool:
        """Return when this connection may read; True if it had to wait. Ends by cancellation only
        otherwise: the connection's reader scope (write failure, shutdown) cancels it."""
        budget = self._budget
        if budget is None or not budget.must_wait(self._holds()):
            return False
        event = self._event = trio.Event()
        budget.wait(self, event.set)
        self._paused()
        try:
            await event.wait()
        finally:
            self._event = None
            budget.leave(self)
        return True

    def read_done(self) -> None:
        if self._budget is not None:
            self._budget.read_done(self)

    def consumed(self) -> None:
        """The connection's handlers took bytes: once it holds no complete message, it need not wait."""
        if self._event is not None and not self._holds():
            assert self._budget is not None
            self._budget.leave(self)
            self._event.set()

    def close(self) -> None:
        """The connection is over: out of the queue, and any step it was given is free. The callbacks
        (the connection's own methods) are dropped, so the connection is not kept by a cycle."""
        if self._budget is not None:
            self._budget.leave(self)
            self._budget.read_done(self)
        self._holds, self._paused = _holds_nothing, _nothing


def _holds_nothing() -> bool:
    return False


def _nothing() -> None:
    return None
