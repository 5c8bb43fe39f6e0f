"""gRPC length-prefixed message framing: pure functions and one small parser, no I/O.

A gRPC message on the wire is `compressed-flag (1 byte) | length (4 bytes, big-endian) | body`. The
parser checks the declared length against the limit as soon as the 5-byte prefix is in, before a single
byte of the body is kept, and decompresses with an output bound, so neither a huge declared length nor a
small gzip bomb can make it hold more than `max_message_bytes` of body.
"""

from __future__ import annotations

import zlib
from typing import Final

from purerpc.grpclib.status import Status

from edge.grpc.errors import MessageTooLarge, ProtocolViolation, UnsupportedEncoding

PREFIX_BYTES: Final = 5

#: The largest length the 4-byte prefix can express.
MAX_FRAMED_LENGTH: Final = 2**32 - 1

#: `grpc-encoding` values we decompress. "identity" is "not compressed".
DECOMPRESSIBLE_ENCODINGS: Final = ("gzip", "deflate")

#: What we advertise in `grpc-accept-encoding`.
ACCEPTED_ENCODINGS: Final = ("identity", "deflate", "gzip")

# zlib wbits: 32 + 15 = detect a zlib or gzip header automatically. grpc-core's "deflate" is the zlib
# format and its "gzip" the gzip format; accepting either under either name costs nothing.
_AUTO_HEADER_WBITS: Final = 32 + zlib.MAX_WBITS


def frame_message(body: bytes) -> bytes:
    """The wire form of one uncompressed message."""
    if len(body) > MAX_FRAMED_LENGTH:
        raise MessageTooLarge(len(body), MAX_FRAMED_LENGTH, "sent")
    return b"\x00" + len(body).to_bytes(4, "big") + body


def percent_encode_message(message: str) -> str:
    """`grpc-message` encoding from the gRPC HTTP/2 spec: UTF-8, then every byte outside the printable
    ASCII range 0x20-0x7E, and '%' itself, as %XX."""
    out = []
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def status_trailers(status: Status, *, response_started: bool) -> list[tuple[str, str]]:
    """The HEADERS fields that end a call with `status`: trailers, or a whole "trailers-only" response
    (one HEADERS frame with everything) when no response was started."""
    fields: list[tuple[str, str]] = []
    if not response_started:
        fields += [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-accept-encoding", ",".join(ACCEPTED_ENCODINGS)),
        ]
    fields.append(("grpc-status", str(status.int_value)))
    if status.status_message:
        fields.append(("grpc-message", percent_encode_message(status.status_message)))
    return fields


def decompress_bounded(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Decompress one message body, never producing more than `limit + 1` bytes."""
    if encoding is None or encoding == "identity":
        raise ProtocolViolation("compressed message without grpc-encoding")
    if encoding not in DECOMPRESSIBLE_ENCODINGS:
        raise UnsupportedEncoding(encoding)
    inflater = zlib.decompressobj(wbits=_AUTO_HEADER_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ProtocolViolation("corrupt compressed message") from None
    if len(out) > limit:
        raise MessageTooLarge(len(out), limit, "decompressed")
    if not inflater.eof:
        raise ProtocolViolation("truncated compressed message")
    return out


class MessageParser:
    """Turns a stream's DATA bytes into message bodies, one at a time, on demand.

    `feed` only appends; `next_message` cuts out at most one message. The caller decides how many it
    wants (the stream's queue bound), so bytes it does not want yet stay raw, un-decompressed and counted.

    `feed` also says how many messages the new bytes completed (their *arrival*, whether or not anyone
    has asked for them yet), by reading length prefixes ahead of `next_message`: what a per-stream
    message-rate limit counts.
    """

    __slots__ = ("_buffer", "_compressed", "_encoding", "_fed", "_length", "_limit", "_removed", "_scan_at", "_scan_end")

    def __init__(self, limit: int, encoding: str | None) -> None:
        self._limit = limit
        self._encoding = encoding
        self._buffer = bytearray()
        self._length: int | None = None  # body length of the message in progress, once its prefix is in
        self._compressed = False
        # Arrival scan, in offsets since the first byte fed: bytes fed, bytes cut from the buffer's head,
        # the next prefix not yet read, and the end of the message whose prefix was read (None: none).
        self._fed = 0
        self._removed = 0
        self._scan_at = 0
        self._scan_end: int | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    @property
    def mid_message(self) -> bool:
        """True when some bytes of a message have arrived but not all of them."""
        return self._length is not None or bool(self._buffer)

    def feed(self, data: bytes) -> int:
        """Append `data`; return how many messages it completed."""
        self._buffer += data
        self._fed += len(data)
        arrived = 0
        while True:
            if self._scan_end is None:
                start = self._scan_at - self._removed
                if start < 0 or len(self._buffer) - start < PREFIX_BYTES:
                    return arrived
                length = int.from_bytes(self._buffer[start + 1 : start + PREFIX_BYTES], "big")
                self._scan_end = self._scan_at + PREFIX_BYTES + length
            if self._fed < self._scan_end:
                return arrived
            arrived += 1
            self._scan_at = self._scan_end
            self._scan_end = None

    def discard(self) -> None:
        """Drop everything (the stream failed or was reset)."""
        self._removed += len(self._buffer)
        self._buffer = bytearray()
        self._length = None
        self._scan_at = self._removed  # == self._fed: nothing is left to scan
        self._scan_end = None

    def next_message(self) -> bytes | None:
        """The next complete message body, decompressed; None if it has not all arrived yet.

        Raises MessageTooLarge, ProtocolViolation or UnsupportedEncoding; after that the parser must not
        be used again.
        """
        if self._length is None:
            if len(self._buffer) < PREFIX_BYTES:
                return None
            flag = self._buffer[0]
            if flag > 1:
                raise ProtocolViolation("invalid compressed-flag byte in message prefix")
            length = int.from_bytes(self._buffer[1:PREFIX_BYTES], "big")
            if length > self._limit:
                raise MessageTooLarge(length, self._limit)
            del self._buffer[:PREFIX_BYTES]
            self._removed += PREFIX_BYTES
            self._length = length
            self._compressed = flag == 1
        if len(self._buffer) < self._length:
            return None
        body = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._removed += self._length
        self._length = None
        if self._compressed:
            return decompress_bounded(body, self._encoding, self._limit)
        return body
