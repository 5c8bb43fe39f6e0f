"""`InboundStream`: what the server holds for one stream's handler, and the rules for holding it. No I/O.

One per open request stream, owned by `GrpcServerProtocol`: the raw DATA bytes not yet cut into messages
(`parser`), the bounded queue of complete messages, the flow-control bytes withheld from the client while
that queue is full, and the stream's message meter. `GrpcServerProtocol` decides when to acknowledge
bytes to the client; this class only keeps the books.
"""

from __future__ import annotations

import collections

import attrs

from edge.grpc.errors import OverBudget, ProtocolViolation, RateLimited, StreamError
from edge.grpc.framing import MessageParser
from edge.grpc.limits import HeldBytesBudget, InboundMeter


@attrs.define
class InboundStream:
    parser: MessageParser
    queue: collections.deque[bytes] = attrs.field(factory=collections.deque)
    queued_bytes: int = 0
    withheld: int = 0  # flow-controlled bytes received but not yet acknowledged to the peer
    remote_ended: bool = False
    reset_code: int | None = None
    failure: StreamError | None = None
    meter: InboundMeter | None = None
    held: bool = False  # acknowledgements withheld because the queue is full (meter told)
    arrived: int = 0  # messages that arrived within the meter's limit
    extracted: int = 0  # messages cut out of the parser into the queue
    #: Once over the rate: deliver the first `cutoff` messages, then fail with `over_limit`.
    cutoff: int | None = None
    over_limit: StreamError | None = None
    #: False while the stream is held: nothing is acknowledged, so the client can send no more than
    #: its initial window (`ProtocolLimits.initial_window_bytes`) until the handler opens it.
    window_open: bool = True
    #: The shared budget this stream's bytes are charged to until it is admitted, and the charge now.
    budget: HeldBytesBudget | None = None
    charged: int = 0

    def may_acknowledge(self, queue_limit: int) -> bool:
        """Whether bytes that arrive now may be acknowledged to the client (more window for it)."""
        return (
            self.window_open and self.failure is None and self.cutoff is None and len(self.queue) < queue_limit
        )

    def charge(self) -> None:
        """Bring the budget's charge in line with what the stream holds. No room for its growth: the
        stream fails (OverBudget) and drops everything it holds."""
        if self.budget is None:
            return
        grown = self.buffered - self.charged
        if grown > 0:
            if self.budget.charge(grown):
                self.charged += grown
            else:
                self.fail(OverBudget())
                self.discard()
        if self.charged > self.buffered:
            self.budget.release(self.charged - self.buffered)
            self.charged = self.buffered

    def uncharge(self) -> None:
        """The stream was admitted (or is gone): its bytes no longer count against the budget."""
        if self.budget is not None:
            self.budget.release(self.charged)
            self.budget = None
            self.charged = 0

    @property
    def buffered(self) -> int:
        return self.queued_bytes + self.parser.buffered_bytes

    def count_arrivals(self, arrived: int, now: float) -> None:
        """`arrived` messages completed at `now`: tell the meter; past its limit, set the cut-off."""
        assert self.meter is not None
        for _ in range(arrived):
            if not self.meter.message(now):
                self.cutoff = self.arrived
                self.over_limit = RateLimited(self.meter.exceeded_message())
                return
            self.arrived += 1

    def extract(self, queue_limit: int) -> None:
        """Cut complete messages out of the raw bytes until the queue holds `queue_limit`."""
        while self.failure is None and len(self.queue) < queue_limit:
            if self.cutoff is not None and self.extracted >= self.cutoff:
                assert self.over_limit is not None
                self.fail(self.over_limit)
                return
            try:
                message = self.parser.next_message()
            except StreamError as exc:
                self.fail(exc)
                return
            if message is None:
                if self.remote_ended and self.parser.mid_message:
                    self.fail(ProtocolViolation("request stream ended inside a message"))
                return
            self.queue.append(message)
            self.queued_bytes += len(message)
            self.extracted += 1

    def fail(self, exc: StreamError) -> None:
        """Messages queued before the bad one are still delivered; then `exc`."""
        self.failure = exc
        self.parser.discard()

    def pop(self) -> bytes:
        """The oldest queued message (the queue must not be empty)."""
        message = self.queue.popleft()
        self.queued_bytes -= len(message)
        return message

    def discard(self) -> None:
        """Drop every message and raw byte held (the stream was reset or is finished)."""
        self.queue.clear()
        self.queued_bytes = 0
        self.parser.discard()
