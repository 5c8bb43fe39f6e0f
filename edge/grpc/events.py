"""What `GrpcServerProtocol.receive_data` tells the Trio shell: frozen event values, no behaviour.

The connection's reader task turns each event into a wake-up or a new stream task (`connection.py`).
"""

from __future__ import annotations

import enum
from typing import Final

import attrs
from purerpc.grpclib.status import Status


@attrs.frozen
class Request:
    """A validated gRPC request's headers."""

    stream_id: int
    path: str
    metadata: tuple[tuple[str, str | bytes], ...]
    authority: str | None
    message_encoding: str | None
    timeout: float | None  # seconds, from grpc-timeout


@attrs.frozen
class RequestStarted:
    request: Request


@attrs.frozen
class RequestRejected:
    """Headers that are not a gRPC request; already answered with `status`, no handler needed."""

    stream_id: int
    status: Status = attrs.field(eq=False)
    reason: str


@attrs.frozen
class StreamReadable:
    """A message, the end of the request stream, or a stream error is ready for `next_message`."""

    stream_id: int


@attrs.frozen
class StreamResetByPeer:
    stream_id: int
    error_code: int


@attrs.frozen
class SendWindowOpened:
    """More may be sent on `stream_id` (0: on every stream)."""

    stream_id: int


@attrs.frozen
class PeerSettingsReceived:
    """The client's SETTINGS arrived (the first one completes its connection preface)."""


@attrs.frozen
class PeerGoingAway:
    """The client sent GOAWAY. h2 cannot send anything after that, so every stream is over."""

    error_code: int
    last_stream_id: int


Event = (
    RequestStarted
    | RequestRejected
    | StreamReadable
    | StreamResetByPeer
    | SendWindowOpened
    | PeerSettingsReceived
    | PeerGoingAway
)


class NotReady(enum.Enum):
    """The type of `NOT_READY` (one value, so `is NOT_READY` narrows types)."""

    NOT_READY = "not ready"


#: `GrpcServerProtocol.next_message` result: nothing to hand out yet, wait for `StreamReadable`.
NOT_READY: Final = NotReady.NOT_READY
