"""`GrpcServerStats`: counters the transport keeps while it runs, for tests and for operators."""

from __future__ import annotations

import collections
from collections.abc import Callable

import attrs
import trio

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
    #: Connections refused or closed by a limit, by cause (may be shared with the ops HTTP port).
    refusals: RefusalTally = attrs.field(factory=RefusalTally)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    def notify(self) -> None:
        """Wake `wait_until` callers (the transport calls this after each change)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[GrpcServerStats], bool]) -> None:
        """Return once `predicate(self)` is true. Put a deadline around it."""
        await trio.lowlevel.checkpoint()
        while not predicate(self):
            await self._changed.wait()
