"""`GrpcServerConfig`: everything the transport needs, as one frozen value built by the caller."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Final

import attrs
from attrs import validators as v

from edge.grpc.frame_guard import Budget, FrameBudgets
from edge.grpc.framing import MAX_FRAMED_LENGTH
from edge.grpc.inbound_budget import InboundBudget
from edge.grpc.limits import MAX_WINDOW, HeldBytesBudget, InboundMeter, ProtocolLimits

#: Per-stream HTTP/2 receive window. Small next to a message: bytes are acknowledged as they are
#: buffered (protocol.py), so this bounds what a stalled stream holds *beyond* its queue, not the
#: message size. 256 KiB keeps about 2.5 MB/s per stream on a 100 ms round trip.
DEFAULT_STREAM_WINDOW_BYTES: Final = 256 * 1024

#: SETTINGS_INITIAL_WINDOW_SIZE: what any stream may send before the server opens its window (HTTP/2's
#: own default). A held stream (`held_paths`) holds no more than this until its handler opens it.
DEFAULT_INITIAL_WINDOW_BYTES: Final = 65_535

#: Bound on a request's decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE; grpcio's own default
#: metadata limit is 8 KiB soft / 16 KiB hard).
DEFAULT_MAX_HEADER_LIST_BYTES: Final = 16 * 1024


def _positive_float(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class GrpcServerConfig:
    host: str = attrs.field(validator=v.instance_of(str))
    port: int = attrs.field(validator=[v.instance_of(int), v.ge(0), v.le(65535)])
    #: None = plaintext h2c with prior knowledge.
    ssl_context: ssl.SSLContext | None = attrs.field(validator=v.optional(v.instance_of(ssl.SSLContext)))
    #: Inbound and outbound bound per message, after decompression.
    max_message_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=[v.ge(1), v.le(MAX_FRAMED_LENGTH)])
    #: SETTINGS_MAX_CONCURRENT_STREAMS, per connection.
    max_concurrent_streams: int = attrs.field(default=100, validator=[v.ge(1), v.le(2**31 - 1)])
    #: Complete messages queued per stream before flow control stops the client.
    stream_inbound_queue: int = attrs.field(default=16, validator=v.ge(1))
    #: Seconds (Trio time) for the TLS handshake and, after it, for the client's HTTP/2 preface.
    tls_handshake_timeout: float = attrs.field(default=10.0, validator=_positive_float)
    #: Seconds to send final statuses + GOAWAY and close a connection when shutting down, and the
    #: time a handler gets after its stream was reset before it is cancelled.
    shutdown_grace: float = attrs.field(default=5.0, validator=_positive_float)
    #: SETTINGS_INITIAL_WINDOW_SIZE (per-stream receive window).
    stream_window_bytes: int = attrs.field(
        default=DEFAULT_STREAM_WINDOW_BYTES, validator=[v.ge(16 * 1024), v.le(MAX_WINDOW)]
    )
    #: SETTINGS_MAX_HEADER_LIST_SIZE, enforced on every request's headers.
    max_header_list_bytes: int = attrs.field(default=DEFAULT_MAX_HEADER_LIST_BYTES, validator=v.ge(1024))
    #: A connection whose socket accepts no bytes for this long is declared dead.
    write_stall_timeout: float = attrs.field(default=60.0, validator=_positive_float)
    #: Open connections at once (TLS handshakes included); one more is reset as it is accepted.
    max_connections: int = attrs.field(default=20000, validator=v.ge(1))
    #: Open connections at once from one source address (IPv6: one /64); 0: no such limit.
    max_connections_per_address: int = attrs.field(default=256, validator=v.ge(0))
    #: Seconds a connection may have no open stream (from its HTTP/2 start or its last stream's
    #: end) before it gets GOAWAY and is closed.
    idle_timeout: float = attrs.field(default=30.0, validator=_positive_float)
    #: Makes each stream's inbound message meter, given the stream's start time (Trio time); over
    #: its limit the stream fails with RateLimited (RESOURCE_EXHAUSTED). None: no per-stream rate limit.
    message_meter: Callable[[float], InboundMeter] | None = attrs.field(default=None, eq=False)
    #: SETTINGS_INITIAL_WINDOW_SIZE (at most `stream_window_bytes`); every stream's window grows to
    #: `stream_window_bytes` when it is opened.
    initial_window_bytes: int = attrs.field(default=DEFAULT_INITIAL_WINDOW_BYTES, validator=v.ge(1))
    #: Paths whose streams start held: window at `initial_window_bytes` until the handler calls
    #: `ServerStream.open_window()`, bytes charged to `held_budget` until `ServerStream.admit()`.
    held_paths: frozenset[str] = attrs.field(default=frozenset())
    #: Bytes held for not-yet-admitted streams over every connection of the server (shared, mutable).
    held_budget: HeldBytesBudget | None = attrs.field(default=None, eq=False)
    #: Bytes held for every stream's handler over every connection (shared, mutable): when it is full,
    #: clients get backpressure (`inbound_budget.py`). None: each stream bounded on its own only.
    inbound_budget: InboundBudget | None = attrs.field(default=None, eq=False)
    #: Per-connection frame budgets (PING, SETTINGS, RST_STREAM, empty frames, WINDOW_UPDATE).
    frame_budgets: FrameBudgets = attrs.field(factory=FrameBudgets)

    def protocol_limits(self) -> ProtocolLimits:
        return ProtocolLimits(
            max_message_bytes=self.max_message_bytes,
            max_concurrent_streams=self.max_concurrent_streams,
            stream_inbound_queue=self.stream_inbound_queue,
            stream_window_bytes=self.stream_window_bytes,
            max_header_list_bytes=self.max_header_list_bytes,
            message_meter=self.message_meter,
            initial_window_bytes=min(self.initial_window_bytes, self.stream_window_bytes),
            held_paths=self.held_paths,
            held_budget=self.held_budget,
            inbound_budget=self.inbound_budget,
            frame_budgets=self._frame_budgets(),
        )

    def _frame_budgets(self) -> FrameBudgets:
        """`frame_budgets`, with room for a client to cancel every call it may have open, twice."""
        reset = self.frame_budgets.reset
        burst = max(reset.burst, 2.0 * self.max_concurrent_streams)
        return attrs.evolve(self.frame_budgets, reset=Budget(rate=reset.rate, burst=burst))
