"""`GrpcServerStats`: counters the transport keeps while it runs, for tests and for operators."""

from __future__ import annotations

import collections
from collections.abc import Callable

import attrs
import trio

from edge.grpc.inbound_budget import InboundBudget
from edge.grpc.limits import HeldBytesBudget
from edge.grpc.refusals import RefusalTally


@attrs.define(eq=False)
class GrpcServerStats:
    """Live counters of one server (or of the connections given the same object).

    Only the Trio thread that runs the server touches it. `wait_until(predicate)` wakes on every change,
    so tests wait for a condition instead of sleeping.
    """

    connections_accepted: int = 0
    connections_open: int = 0
    streams_started: int = 0
    #: Handler tasks alive right now.
    streams_open: int = 0
    #: Streams that ended because the client reset them (RST_STREAM, i.e. a cancelled call).
    streams_reset: int = 0
    #: Streams that ended because their connection closed, failed or was reset.
    streams_lost: int = 0
    handler_errors: int = 0
    #: Final statuses sent, by StatusCode name.
    statuses: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Inbound message bytes held for handlers right now, over all streams and connections.
    inbound_buffered_bytes: int = 0
    #: The most any single stream has held at once.
    max_stream_buffered_bytes: int = 0
    #: Connections closed for breaking a connection-level bound (GOAWAY sent), by reason: frame_too_large,
    #: ping_flood, settings_flood, reset_flood, empty_frames_flood, window_update_flood, not_reading.
    connections_refused: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: The server's budget for streams not admitted yet (`GrpcServerConfig.held_budget`), as last seen:
    #: bytes held now, the most ever held, and streams refused for want of room.
    held_bytes: int = 0
    held_bytes_peak: int = 0
    held_refused: int = 0
    #: The server's inbound budget (`GrpcServerConfig.inbound_budget`), as last seen: the most held at
    #: once, the times a connection waited for room, and the connections waiting now.
    inbound_peak: int = 0
    inbound_pauses: int = 0
    inbound_waiting: int = 0
    #: Connections refused or closed by a limit, by cause (may be shared with the ops HTTP port).
    refusals: RefusalTally = attrs.field(factory=RefusalTally)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    def report_held(self, budget: HeldBytesBudget | None) -> None:
        if budget is not None:
            self.held_bytes, self.held_bytes_peak, self.held_refused = budget.held, budget.peak, budget.refused

    def report_inbound(self, budget: InboundBudget | None) -> bool:
        """Take the budget's figures; True if they changed."""
        if budget is None:
            return False
        figures = (budget.peak, budget.pauses, budget.waiting)
        changed = figures != (self.inbound_peak, self.inbound_pauses, self.inbound_waiting)
        self.inbound_peak, self.inbound_pauses, self.inbound_waiting = figures
        return changed

    def notify(self) -> None:
        """Wake `wait_until` callers (the transport calls this after each change)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[GrpcServerStats], bool]) -> None:
        """Return once `predicate(self)` is true. Put a deadline around it."""
        await trio.lowlevel.checkpoint()
        while not predicate(self):
            await self._changed.wait()
