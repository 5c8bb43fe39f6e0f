"""Bounds for one HTTP/2 connection (`ProtocolLimits`) and the per-stream message meter it may carry.

Plain values, no I/O: `GrpcServerConfig.protocol_limits()` builds them, `GrpcServerProtocol` enforces them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import attrs

#: HTTP/2's initial connection window (RFC 9113 6.9.2); SETTINGS never change it, WINDOW_UPDATE does.
H2_DEFAULT_WINDOW: Final = 65_535
MAX_WINDOW: Final = 2**31 - 1


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

    @property
    def connection_window_bytes(self) -> int:
        """Room for every stream to hold back a full window at once and one more to keep moving: a
        stalled stream can never starve its neighbours of connection-level window."""
        return min(MAX_WINDOW, (self.max_concurrent_streams + 1) * self.stream_window_bytes)
