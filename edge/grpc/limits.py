"""Bounds for one HTTP/2 connection (`ProtocolLimits`) and the per-stream message meter it may carry.

Plain values, no I/O: `GrpcServerConfig.protocol_limits()` builds them, `GrpcServerProtocol` enforces them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import attrs

from edge.grpc.frame_guard import FrameBudgets
from edge.grpc.inbound_budget import InboundBudget

#: HTTP/2's initial connection window (RFC 9113 6.9.2); SETTINGS never change it, WINDOW_UPDATE does.
H2_DEFAULT_WINDOW: Final = 65_535
MAX_WINDOW: Final = 2**31 - 1
#: Bytes a connection may hold queued in reply to the client's own frames (PING and SETTINGS
#: acknowledgements, WINDOW_UPDATEs) before the client is taken to be not reading: it is closed rather
#: than buffered for. Streams' own DATA does not count (flow control and the writer bound that).
MAX_PENDING_OUTBOUND_BYTES: Final = 4 * 1024 * 1024


class InboundMeter(Protocol):
    """Counts one stream's inbound messages (times are the caller's clock, e.g. trio.current_time())."""

    def message(self, now: float) -> bool:
        """One message arrived; False if that is over the limit."""

    def held(self, now: float) -> None:
        """The server started holding the stream back (queue full)."""

    def released(self, now: float) -> None:
        """The server stopped holding it back."""

    def exceeded_message(self) -> str:
        """Text for the client once over the limit (no exception text: numbers and fixed words)."""


@attrs.frozen
class ProtocolLimits:
    """Bounds for one connection. Built from `GrpcServerConfig`."""

    max_message_bytes: int
    max_concurrent_streams: int
    stream_inbound_queue: int
    stream_window_bytes: int
    max_header_list_bytes: int
    #: Makes each stream's inbound meter (given the time the stream started); None: no rate limit.
    message_meter: Callable[[float], InboundMeter] | None = None
    #: SETTINGS_INITIAL_WINDOW_SIZE: what a stream may send before the server opens its window to
    #: `stream_window_bytes` (at once, or for `held_paths` when the handler calls `open_window`).
    initial_window_bytes: int | None = None  # None: `stream_window_bytes` (no held window)
    #: Request paths whose streams start held: window at `initial_window_bytes` until opened, and their
    #: buffered bytes charged to `held_budget` until admitted (`ServerStream.admit`).
    held_paths: frozenset[str] = frozenset()
    held_budget: HeldBytesBudget | None = attrs.field(default=None, eq=False)
    #: Bytes held for handlers over every connection sharing it (`inbound_budget.py`); None: no such bound.
    inbound_budget: InboundBudget | None = attrs.field(default=None, eq=False)
    frame_budgets: FrameBudgets = FrameBudgets()
    max_pending_outbound_bytes: int = MAX_PENDING_OUTBOUND_BYTES

    @property
    def first_window_bytes(self) -> int:
        """SETTINGS_INITIAL_WINDOW_SIZE."""
        return self.stream_window_bytes if self.initial_window_bytes is None else self.initial_window_bytes

    @property
    def connection_window_bytes(self) -> int:
        """Room for every stream to hold back a full window at once and one more to keep moving: a
        stalled stream can never starve its neighbours of connection-level window."""
        return min(MAX_WINDOW, (self.max_concurrent_streams + 1) * self.stream_window_bytes)


@attrs.define(eq=False)
class HeldBytesBudget:
    """Bytes buffered, over every connection sharing it, for streams not admitted yet (e.g. peers that
    have not registered). A stream whose bytes would take it over `limit` fails (`OverBudget`)."""

    limit: int
    held: int = 0
    #: The most ever held at once, and the streams failed for want of room (for tests and operators).
    peak: int = 0
    refused: int = 0

    def charge(self, size: int) -> bool:
        if self.held + size > self.limit:
            self.refused += 1
            return False
        self.held += size
        self.peak = max(self.peak, self.held)
        return True

    def release(self, size: int) -> None:
        self.held = max(0, self.held - size)
