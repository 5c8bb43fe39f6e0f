"""`OutboundQueue`: the bytes one connection has queued for its client, and how much of them answer the
client's own frames. No I/O: `GrpcServerProtocol` fills it from h2, the connection's writer empties it.
"""

from __future__ import annotations

from collections.abc import Callable

from h2.errors import ErrorCodes

from edge.grpc.frame_guard import ConnectionAbuse


class OutboundQueue:
    """Bytes to send, pulled from h2 (`pull` is h2's `data_to_send`) and handed out in chunks.

    A client that sends without reading makes the server's replies to its frames (PING and SETTINGS
    acknowledgements, WINDOW_UPDATEs) pile up; streams' DATA is bounded elsewhere (flow control, the
    writer's high-water mark). `replies` is an upper bound on the replies still queued: what the
    protocol's own input added, clamped to what is left once the writer took bytes from the front.
    """

    def __init__(self, pull: Callable[[], bytes], reply_limit: int) -> None:
        self._h2_data = pull
        self._buffer = bytearray()
        self.reply_limit = reply_limit
        self.replies = 0

    def __len__(self) -> int:
        data = self._h2_data()
        if data:
            self._buffer += data
        return len(self._buffer)

    def count_replies(self, before: int) -> None:
        """The client's input was processed while `before` bytes were queued: count what it added; raise
        ConnectionAbuse (not_reading, no flush) over the limit."""
        now = len(self)
        self.replies = min(self.replies + max(0, now - before), now)
        if self.replies > self.reply_limit:
            raise ConnectionAbuse(ErrorCodes.ENHANCE_YOUR_CALM, "not_reading", flush=False)

    def take(self, amount: int | None = None) -> bytes:
        """Up to `amount` bytes from the front (everything with None)."""
        size = len(self)
        if amount is None or amount >= size:
            amount = size
        data = bytes(self._buffer[:amount])
        del self._buffer[:amount]
        return data

    def clear(self) -> None:
        """Drop everything queued (a client that does not read will never get it)."""
        len(self)
        self._buffer.clear()
        self.replies = 0
