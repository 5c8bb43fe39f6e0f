"""`LateFrameSplitter`: cut an inbound HTTP/2 byte stream so late stream-level frames can be dropped.

Pure bytes in, pieces out; used by the server's `GrpcServerProtocol` and by the tools' client
(`edge.tools.grpc_client`), which both feed h2 3.2 and share its flaw described below.
"""

from __future__ import annotations

from typing import Any, Final

from edge.grpc.frame_guard import CLIENT_PREFACE_BYTES, FRAME_HEADER_BYTES, RST_STREAM, WINDOW_UPDATE, FrameHeader

_MAX_HELD_PAYLOAD: Final = 16  # both frame types have 4-byte payloads; anything bigger is h2's to reject


class LateFrameSplitter:
    """Cuts the inbound byte stream so each stream-level RST_STREAM / WINDOW_UPDATE frame is its own piece.

    Why: RFC 9113 5.1 says a peer may still send WINDOW_UPDATE or RST_STREAM for a stream shortly after
    it closed, and those must be ignored. h2 3.2 (pinned by purerpc) instead raises a *connection* error
    for them once it has forgotten the closed stream (which it does whenever a new stream is opened), so a
    late WINDOW_UPDATE from grpcio would kill every other stream on the connection. Feeding these frames
    to h2 one by one lets the caller drop the ones addressed to closed streams, deciding with
    h2's state as it is at that exact frame. Everything else passes through in as few pieces as possible.
    """

    __slots__ = ("_header", "_held", "_held_need", "_held_stream", "_passthrough", "_preface_left")

    def __init__(self, *, server_side: bool = True) -> None:
        # A server's inbound bytes start with the client's connection preface; a client's do not.
        self._preface_left = CLIENT_PREFACE_BYTES if server_side else 0
        self._passthrough = 0  # payload bytes of the current ordinary frame still to pass on
        self._header = bytearray()  # a frame header split across reads
        self._held: bytearray | None = None  # a RST_STREAM/WINDOW_UPDATE frame being collected
        self._held_need = 0
        self._held_stream = 0

    def split(self, data: bytes | bytearray) -> list[tuple[bytes | bytearray, int | None]]:
        """Pieces in order: (bytes, None) to pass on, or (one whole frame, its stream id)."""
        pieces: list[tuple[bytes | bytearray, int | None]] = []
        size = len(data)
        run_start = 0
        i = 0
        while i < size:
            if self._preface_left:
                step = min(self._preface_left, size - i)
                self._preface_left -= step
                i += step
                continue
            if self._passthrough:
                step = min(self._passthrough, size - i)
                self._passthrough -= step
                i += step
                continue
            if self._held is not None:
                step = min(self._held_need - len(self._held), size - i)
                self._held += data[i : i + step]
                i += step
                run_start = i
                if len(self._held) == self._held_need:
                    pieces.append((bytes(self._held), self._held_stream))
                    self._held = None
                continue
            # At a frame boundary.
            if self._header or size - i < FRAME_HEADER_BYTES:
                if i > run_start:
                    pieces.append((data[run_start:i], None))
                step = min(FRAME_HEADER_BYTES - len(self._header), size - i)
                self._header += data[i : i + step]
                i += step
                run_start = i
                if len(self._header) < FRAME_HEADER_BYTES:
                    continue
                header: bytes | bytearray = bytes(self._header)
                self._header.clear()
                in_run = False
            else:
                header = data[i : i + FRAME_HEADER_BYTES]
                in_run = True
            parsed = FrameHeader.parse(header)
            length, frame_type, stream_id = parsed.length, parsed.type, parsed.stream_id
            if frame_type in (RST_STREAM, WINDOW_UPDATE) and stream_id and length <= _MAX_HELD_PAYLOAD:
                if in_run:
                    if i > run_start:
                        pieces.append((data[run_start:i], None))
                    i += FRAME_HEADER_BYTES
                    run_start = i
                self._held = bytearray(header)
                self._held_need = FRAME_HEADER_BYTES + length
                self._held_stream = stream_id
                if length == 0:
                    pieces.append((bytes(self._held), stream_id))
                    self._held = None
            else:
                if in_run:
                    i += FRAME_HEADER_BYTES
                else:
                    pieces.append((header, None))
                self._passthrough = length
        if run_start < size:
            pieces.append((data if run_start == 0 else data[run_start:], None))
        return pieces


def closed_client_stream(h2c: Any, stream_id: int) -> bool:
    """Whether `stream_id` is a client stream the server's `h2c` (an h2 `H2Connection`) has seen open and
    that is closed now (or was skipped, so implicitly closed): a late frame for it is to be ignored."""
    if stream_id % 2 == 0 or stream_id > h2c.highest_inbound_stream_id:
        return False
    stream = h2c.streams.get(stream_id)
    return stream is None or bool(stream.closed)
