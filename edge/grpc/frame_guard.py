"""`FrameGuard`: what a client's HTTP/2 frames may cost one connection, judged at each 9-byte frame header
before h2 sees the bytes. Pure values and arithmetic: no I/O, no Trio; time is the caller's `now`.

Why in front of h2: h2 3.2 (pinned by purerpc) buffers a whole frame before it checks the frame's length,
so one header declaring 16 MiB costs 16 MiB and seconds of CPU before it is refused. `FrameScanner`
follows frame boundaries across reads (the client's 24-byte preface first) and hands over each header the
moment its ninth byte arrives; `FrameGuard` refuses a frame over SETTINGS_MAX_FRAME_SIZE right there
(FRAME_SIZE_ERROR) and counts the frames that cost the server work but carry nothing for a handler:

    budget            counts (per connection)                           HTTP/2 DoS class
    ping              PING frames                                       CVE-2019-9512
    settings          SETTINGS frames                                   CVE-2019-9515
    reset             RST_STREAM frames (streams the client reset)      CVE-2019-9514, CVE-2023-44487
    empty             DATA without END_STREAM, HEADERS or CONTINUATION  CVE-2019-9518
                      frames with no payload
    window_update     WINDOW_UPDATE frames                              (flow-control churn)

Each budget is a leaky bucket: `burst` frames at once, refilling at `rate` per second. Over any of them
the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed (`ConnectionAbuse`). The defaults are far
above what grpcio, grpc-go or purerpc clients send (a handful of PINGs and SETTINGS per minute, one
RST_STREAM per cancelled call) and far below a flood (millions of frames a minute).

A header field with an empty name (CVE-2019-9516) is malformed (RFC 9113 8.2.1) and crashes h2 3.2's
header validation; `GrpcServerProtocol` turns that into GOAWAY PROTOCOL_ERROR on the first one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
from h2.errors import ErrorCodes

#: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", before the client's first frame.
CLIENT_PREFACE_BYTES: Final = 24
FRAME_HEADER_BYTES: Final = 9

DATA: Final = 0x0
HEADERS: Final = 0x1
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PING: Final = 0x6
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
END_STREAM: Final = 0x1
END_HEADERS: Final = 0x4


@attrs.frozen
class FrameHeader:
    length: int
    type: int
    flags: int
    stream_id: int

    @classmethod
    def parse(cls, header: bytes | bytearray) -> FrameHeader:
        return cls(
            length=int.from_bytes(header[0:3], "big"),
            type=header[3],
            flags=header[4],
            stream_id=int.from_bytes(header[5:9], "big") & 0x7FFF_FFFF,
        )

    @property
    def empty(self) -> bool:
        """A frame with no payload that ends nothing: all cost, no content."""
        if self.length:
            return False
        if self.type == DATA:
            return not self.flags & END_STREAM
        if self.type == HEADERS:
            return True  # an empty header block is never a valid request
        return self.type == CONTINUATION and not self.flags & END_HEADERS


class FrameScanner:
    """Frame boundaries in an inbound byte stream, across reads of any size."""

    __slots__ = ("_header", "_payload_left", "_preface_left")

    def __init__(self, *, preface_bytes: int = CLIENT_PREFACE_BYTES) -> None:
        self._preface_left = preface_bytes
        self._payload_left = 0
        self._header = bytearray()  # a header split across reads

    def feed(self, data: bytes | bytearray) -> list[FrameHeader]:
        """Every frame header completed by `data`, in order."""
        found: list[FrameHeader] = []
        view = memoryview(data)
        i = 0
        size = len(data)
        while i < size:
            if self._preface_left:
                step = min(self._preface_left, size - i)
                self._preface_left -= step
            elif self._payload_left:
                step = min(self._payload_left, size - i)
                self._payload_left -= step
            else:
                step = min(FRAME_HEADER_BYTES - len(self._header), size - i)
                self._header += view[i : i + step]
                if len(self._header) == FRAME_HEADER_BYTES:
                    header = FrameHeader.parse(bytes(self._header))
                    self._header.clear()
                    self._payload_left = header.length
                    found.append(header)
            i += step
        return found


@attrs.frozen
class Budget:
    """`burst` frames at once, then `rate` a second."""

    rate: float
    burst: float


@attrs.frozen
class FrameBudgets:
    """Per-connection frame budgets (see the module docstring)."""

    ping: Budget = Budget(rate=10.0, burst=100.0)
    settings: Budget = Budget(rate=2.0, burst=20.0)
    reset: Budget = Budget(rate=20.0, burst=100.0)
    empty: Budget = Budget(rate=10.0, burst=50.0)
    window_update: Budget = Budget(rate=500.0, burst=1000.0)


@attrs.define
class LeakyBucket:
    """How full one budget is: +1 per frame, draining at `budget.rate` a second."""

    budget: Budget
    level: float = 0.0
    updated: float = 0.0

    def add(self, now: float) -> bool:
        """Count one frame at `now`; False once the bucket overflows."""
        if now > self.updated:
            self.level = max(0.0, self.level - (now - self.updated) * self.budget.rate)
            self.updated = now
        self.level += 1.0
        return self.level <= self.budget.burst


class ConnectionAbuse(Exception):
    """The client broke a connection-level bound: GOAWAY `error_code` and close. `reason` is a fixed
    word (for logs and counters); `flush` False means the client is not reading, so close without
    waiting to write anything."""

    def __init__(self, error_code: ErrorCodes, reason: str, *, flush: bool = True) -> None:
        super().__init__(error_code, reason)
        self.error_code = error_code
        self.reason = reason
        self.flush = flush

    def __str__(self) -> str:
        return f"{self.reason} ({self.error_code.name})"


class FrameGuard:
    """Judges one connection's inbound frames at their headers (see the module docstring)."""

    def __init__(self, budgets: FrameBudgets, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._scanner = FrameScanner()
        self._buckets = {
            PING: ("ping", LeakyBucket(budgets.ping)),
            SETTINGS: ("settings", LeakyBucket(budgets.settings)),
            RST_STREAM: ("reset", LeakyBucket(budgets.reset)),
            WINDOW_UPDATE: ("window_update", LeakyBucket(budgets.window_update)),
        }
        self._empty = LeakyBucket(budgets.empty)
        #: Frame headers seen so far (for tests and stats).
        self.frames = 0

    def check(self, data: bytes | bytearray, now: float) -> None:
        """Look at the frame headers `data` completes; raise ConnectionAbuse at the first one over a
        bound. Call before handing `data` to h2."""
        for header in self._scanner.feed(data):
            self.frames += 1
            if header.length > self.max_frame_size:
                raise ConnectionAbuse(ErrorCodes.FRAME_SIZE_ERROR, "frame_too_large")
            counted = self._buckets.get(header.type)
            if counted is not None and not counted[1].add(now):
                raise ConnectionAbuse(ErrorCodes.ENHANCE_YOUR_CALM, f"{counted[0]}_flood")
            if header.empty and not self._empty.add(now):
                raise ConnectionAbuse(ErrorCodes.ENHANCE_YOUR_CALM, "empty_frames_flood")


def refuse_empty_header_names(receive: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Wrap an h2 3.2 `H2Connection.receive_data`: its header validation indexes `name[0]`, so a header
    field with an empty name (CVE-2019-9516's "0-length headers", malformed by RFC 9113 8.2.1) raises
    IndexError from the middle of its frame handling. That becomes ConnectionAbuse(PROTOCOL_ERROR)."""

    def receive_data(data: bytes) -> Any:
        try:
            return receive(data)
        except IndexError:
            raise ConnectionAbuse(ErrorCodes.PROTOCOL_ERROR, "empty_header_name") from None

    return receive_data
