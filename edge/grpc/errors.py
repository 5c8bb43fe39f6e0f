"""What a handler can see go wrong with its stream, and the gRPC status each one ends the call with.

Every error a `ServerStream` raises derives from `StreamError`. Each class names the status the transport
sends when a handler lets it propagate (`status_code`); `StreamReset` (and `ConnectionLost`) send nothing,
because there is nobody left to send to.

The messages are written here, in this module, from plain numbers and names: they are safe to show a
client. No exception text from anywhere else ever reaches a `grpc-message`.
"""

from __future__ import annotations

from typing import ClassVar, Self

from purerpc.grpclib.status import Status, StatusCode


class StreamError(Exception):
    """Base class for everything `ServerStream.receive_message` / `send_message` raise."""

    #: Status sent when a handler lets this error propagate; None = send nothing (stream is gone).
    status_code: ClassVar[StatusCode | None] = StatusCode.INTERNAL

    def status(self) -> Status | None:
        """The status that ends the call when the handler does not handle this error itself."""
        if self.status_code is None:
            return None
        return Status(self.status_code, self.client_message())

    def client_message(self) -> str:
        """Text for `grpc-message`. Subclasses build it from their own fields only."""
        return "stream error"

    def clone(self) -> Self:
        """A fresh instance with the same meaning (raising one instance twice chains tracebacks)."""
        return type(self)(*self.args)


class StreamReset(StreamError):
    """The client reset the stream (RST_STREAM: a cancelled call). Nothing can be sent any more."""

    status_code = None

    def __init__(self, error_code: int = 0, detail: str = "stream reset by client") -> None:
        super().__init__(error_code, detail)
        self.error_code = error_code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.detail} (h2 error code {self.error_code})"


class ConnectionLost(StreamReset):
    """The stream's connection is gone: closed, reset, failed, or the client sent GOAWAY."""

    def __init__(self, error_code: int = 0, detail: str = "connection lost") -> None:
        super().__init__(error_code, detail)

    def __str__(self) -> str:
        return self.detail


class MessageTooLarge(StreamError):
    """A message over `max_message_bytes` (declared length, or length after decompression)."""

    status_code = StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, size: int, limit: int, direction: str = "received") -> None:
        super().__init__(size, limit, direction)
        self.size = size
        self.limit = limit
        self.direction = direction

    def __str__(self) -> str:
        return f"{self.direction} message of {self.size} bytes exceeds the limit of {self.limit} bytes"

    def client_message(self) -> str:
        return str(self)


class ProtocolViolation(StreamError):
    """Bytes on the stream that are not valid gRPC framing (or a corrupt compressed message)."""

    status_code = StatusCode.INVALID_ARGUMENT

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail

    def client_message(self) -> str:
        # `detail` is always one of this package's fixed strings (see framing.py).
        return self.detail


class RateLimited(ProtocolViolation):
    """The client sent messages on this stream faster than the server's `InboundMeter` allows."""

    status_code = StatusCode.RESOURCE_EXHAUSTED

    def client_message(self) -> str:
        # `detail` comes from the meter, which builds it from its configured numbers only.
        return self.detail


class UnsupportedEncoding(ProtocolViolation):
    """A compressed message in a `grpc-encoding` this server does not implement."""

    status_code = StatusCode.UNIMPLEMENTED

    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding
        self.detail = "unsupported grpc-encoding"

    def __str__(self) -> str:
        return f"unsupported grpc-encoding {self.encoding!r}"

    def client_message(self) -> str:
        # The client sent the name, but echo only a safe form of it.
        safe = "".join(c for c in self.encoding[:32] if c.isalnum() or c in "-_.")
        return f"unsupported grpc-encoding {safe!r}"


class OverBudget(ProtocolViolation):
    """A held stream (not admitted yet) whose buffered bytes would take the server's shared budget for
    such streams (`ProtocolLimits.held_budget`) over its limit."""

    status_code = StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, detail: str = "server holds too many bytes for streams not admitted yet; retry later") -> None:
        super().__init__(detail)
