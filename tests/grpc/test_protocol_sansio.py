"""The sans-IO protocol (`GrpcServerProtocol`) against a bare h2 client, no event loop.

Rules: no I/O and no Trio here; bytes are shuttled between an h2 client connection and the protocol by
`exchange` until both sides are quiet. Each test states one property.
"""

from __future__ import annotations

import gzip
import zlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.grpc.errors import MessageTooLarge, ProtocolViolation, StreamReset, UnsupportedEncoding
from edge.grpc.events import NOT_READY, RequestRejected, RequestStarted, StreamReadable, StreamResetByPeer
from edge.grpc.framing import MessageParser, percent_encode_message
from edge.grpc.late_frames import LateFrameSplitter
from edge.grpc.limits import ProtocolLimits
from edge.grpc.protocol import GrpcServerProtocol
from edge.grpc.stream_tasks import SHUTDOWN_STATUS
from purerpc.grpclib.status import Status, StatusCode

PATH = "/svc/Method"


def frame(body: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(body).to_bytes(4, "big") + body


class Pair:
    """An h2 client wired to a GrpcServerProtocol through in-memory byte shuttling."""

    def __init__(self, limits: ProtocolLimits) -> None:
        self.server = GrpcServerProtocol(limits)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.server_events: list[object] = []
        self.client_events: list[h2.events.Event] = []
        self.server.initiate_connection()
        self.client.initiate_connection()
        self.exchange()

    def exchange(self) -> None:
        while True:
            to_server = self.client.data_to_send()
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                self.client_events += self.client.receive_data(to_client)
            if not to_server and not to_client:
                return

    def open(self, path: str = PATH, headers: tuple[tuple[str, str], ...] = (), end: bool = False) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "x"),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
                *headers,
            ],
            end_stream=end,
        )
        self.exchange()
        return stream_id

    def send(self, stream_id: int, payload: bytes, end: bool = False) -> int:
        """Send as much of `payload` as the flow-control window allows; return how much went."""
        sent = 0
        while sent < len(payload):
            window = min(self.client.local_flow_control_window(stream_id), self.client.max_outbound_frame_size)
            if window <= 0:
                break
            chunk = payload[sent : sent + window]
            sent += len(chunk)
            self.client.send_data(stream_id, chunk, end_stream=end and sent == len(payload))
            self.exchange()
        if end and not payload:
            self.client.end_stream(stream_id)
            self.exchange()
        return sent

    def headers_received(self, stream_id: int) -> dict[str, str]:
        merged: dict[str, str] = {}
        for event in self.client_events:
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) and event.stream_id == stream_id:
                merged.update(dict(event.headers))
        return merged


def limits(**overrides: int) -> ProtocolLimits:
    values = {
        "max_message_bytes": 64 * 1024,
        "max_concurrent_streams": 10,
        "stream_inbound_queue": 4,
        "stream_window_bytes": 16 * 1024,
        "max_header_list_bytes": 8 * 1024,
    }
    values.update(overrides)
    return ProtocolLimits(**values)


def test_settings_come_from_the_limits() -> None:
    """The client sees our MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE and MAX_HEADER_LIST_SIZE, and a
    connection window with room for every stream's window (not purerpc's 64 MiB / 65,536 streams)."""
    pair = Pair(limits(max_concurrent_streams=7, stream_window_bytes=20_000, max_header_list_bytes=4096))
    remote = pair.client.remote_settings
    assert remote.max_concurrent_streams == 7
    assert remote.initial_window_size == 20_000
    assert remote.max_header_list_size == 4096
    assert pair.client.outbound_flow_control_window == 8 * 20_000
    assert pair.server.h2_connection.decoder.max_header_list_size == 4096


def test_a_message_larger_than_the_window_gets_through() -> None:
    """Bytes are acknowledged as they are buffered, so a 60 KiB message passes a 16 KiB window."""
    pair = Pair(limits())
    stream_id = pair.open()
    body = bytes(range(256)) * 240
    assert pair.send(stream_id, frame(body)) == len(body) + 5
    assert pair.server.next_message(stream_id) == body
    assert pair.server.next_message(stream_id) is NOT_READY


def test_a_slow_reader_stops_the_client_by_flow_control() -> None:
    """Nobody reads: the client's stream window closes, the queue stays at its bound, buffered bytes stay
    under queue*max + max + window; reading resumes the flow and every message arrives in order."""
    lim = limits(stream_inbound_queue=3, max_message_bytes=20_000, stream_window_bytes=16_384)
    pair = Pair(lim)
    stream_id = pair.open()
    messages = [bytes([i]) * 20_000 for i in range(40)]
    wire = b"".join(frame(m) for m in messages)
    sent = pair.send(stream_id, wire)
    assert sent < len(wire)
    assert pair.client.local_flow_control_window(stream_id) == 0
    bound = lim.stream_inbound_queue * lim.max_message_bytes + lim.max_message_bytes + lim.stream_window_bytes
    assert pair.server.stream_buffered_bytes(stream_id) <= bound
    received = []
    while len(received) < len(messages):
        message = pair.server.next_message(stream_id)
        if message is NOT_READY:
            pair.exchange()
            sent += pair.send(stream_id, wire[sent:])
            continue
        received.append(message)
        pair.exchange()
        sent += pair.send(stream_id, wire[sent:])
        assert pair.server.stream_buffered_bytes(stream_id) <= bound
    assert received == messages
    assert pair.server.max_stream_buffered_bytes <= bound


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=25),
    queue=st.integers(1, 5),
    reads=st.lists(st.integers(0, 3), min_size=1, max_size=50),
)
def test_any_split_and_any_reading_pace_delivers_every_message_within_the_bound(
    sizes: list[int], queue: int, reads: list[int]
) -> None:
    """Property: whatever the message sizes and however slowly the handler reads, every message arrives
    intact and in order, and a stream never holds more than queue*max + max + window bytes."""
    lim = limits(stream_inbound_queue=queue, max_message_bytes=5000, stream_window_bytes=16_384)
    bound = queue * 5000 + 5000 + 16_384 + 5 * queue
    pair = Pair(lim)
    stream_id = pair.open()
    messages = [bytes([n % 251]) * n for n in sizes]
    wire = b"".join(frame(m) for m in messages)
    sent = 0
    received: list[bytes] = []
    step = 0
    while len(received) < len(messages):
        sent += pair.send(stream_id, wire[sent:])
        assert pair.server.stream_buffered_bytes(stream_id) <= bound
        for _ in range(reads[step % len(reads)] or (1 if step % len(reads) == len(reads) - 1 else 0)):
            message = pair.server.next_message(stream_id)
            if message is NOT_READY:
                break
            received.append(message)
        pair.exchange()
        step += 1
        assert step < 10_000
    assert received == messages


def test_an_oversized_declared_length_fails_only_its_stream_before_the_body_is_buffered() -> None:
    """The 5-byte prefix alone fails the stream with MessageTooLarge; nothing of the body is kept, and a
    second stream on the same connection carries on."""
    pair = Pair(limits(max_message_bytes=1000))
    big = pair.open()
    small = pair.open()
    pair.send(big, (10_000_000).to_bytes(5, "big"))
    assert StreamReadable(big) in pair.server_events
    with pytest.raises(MessageTooLarge) as info:
        pair.server.next_message(big)
    assert (info.value.size, info.value.limit) == (10_000_000, 1000)
    assert info.value.status().status_code == StatusCode.RESOURCE_EXHAUSTED
    pair.send(big, b"x" * 30_000)  # keeps sending: discarded, not acknowledged
    assert pair.server.stream_buffered_bytes(big) == 0
    assert pair.client.local_flow_control_window(big) == 0
    pair.send(small, frame(b"fine"))
    assert pair.server.next_message(small) == b"fine"
    assert pair.server.finish(big, Status(StatusCode.RESOURCE_EXHAUSTED, "too big"), response_started=False)
    pair.exchange()
    assert pair.headers_received(big)["grpc-status"] == "8"


def test_failed_streams_do_not_leak_connection_window() -> None:
    """Bytes held back on failed streams go back to the connection window when each stream is finished:
    after more failed streams than the connection window can hold back, a healthy stream still moves."""
    lim = limits(max_message_bytes=1000)
    pair = Pair(lim)
    for _ in range(3 * lim.max_concurrent_streams):
        bad = pair.open()
        pair.send(bad, (10_000).to_bytes(5, "big") + b"x" * 20_000)
        assert pair.server.stream_withheld_bytes(bad) > 0
        pair.server.finish(bad, Status(StatusCode.RESOURCE_EXHAUSTED), response_started=False)
        pair.exchange()
    good = pair.open()
    wire = b"".join(frame(b"m" * 900) for _ in range(400))
    sent = 0
    received = 0
    for _ in range(10_000):
        sent += pair.send(good, wire[sent:])
        while pair.server.next_message(good) not in (NOT_READY, None):
            received += 1
        pair.exchange()
        if received == 400:
            break
    assert received == 400


def test_client_reset_becomes_an_event_and_frees_the_stream() -> None:
    """RST_STREAM is not dropped (purerpc's bug): StreamResetByPeer, then next_message raises StreamReset."""
    pair = Pair(limits())
    stream_id = pair.open()
    pair.send(stream_id, frame(b"a") + frame(b"b")[:3])
    assert pair.server.inbound_buffered_bytes > 0
    pair.client.reset_stream(stream_id, 8)  # CANCEL, what grpcio sends for a cancelled call
    pair.exchange()
    assert StreamResetByPeer(stream_id, 8) in pair.server_events
    with pytest.raises(StreamReset) as info:
        pair.server.next_message(stream_id)
    assert info.value.error_code == 8
    assert pair.server.inbound_buffered_bytes == 0
    assert not pair.server.finish(stream_id, None, response_started=False)
    assert pair.server.open_streams == 0


def test_gzip_and_deflate_messages_are_decompressed() -> None:
    """grpc-encoding gzip/deflate (as grpcio sends) decompress to the original bytes."""
    pair = Pair(limits())
    body = b"giggity " * 1000
    gz = pair.open(headers=(("grpc-encoding", "gzip"),))
    pair.send(gz, frame(gzip.compress(body), compressed=True) + frame(b"plain"))
    assert pair.server.next_message(gz) == body
    assert pair.server.next_message(gz) == b"plain"
    df = pair.open(headers=(("grpc-encoding", "deflate"),))
    pair.send(df, frame(zlib.compress(body), compressed=True))
    assert pair.server.next_message(df) == body


def test_a_gzip_bomb_fails_only_its_stream() -> None:
    """A 10 KiB gzip message that inflates past the limit: MessageTooLarge after at most limit+1 bytes of
    output; the connection and its other streams are unaffected."""
    pair = Pair(limits(max_message_bytes=64 * 1024))
    bomb = pair.open(headers=(("grpc-encoding", "gzip"),))
    other = pair.open()
    compressed = gzip.compress(b"\0" * (10 * 1024 * 1024))
    assert len(compressed) < 64 * 1024
    pair.send(bomb, frame(compressed, compressed=True))
    with pytest.raises(MessageTooLarge) as info:
        pair.server.next_message(bomb)
    assert info.value.direction == "decompressed"
    pair.send(other, frame(b"still here"))
    assert pair.server.next_message(other) == b"still here"


@pytest.mark.parametrize(
    ("encoding", "payload", "error", "status"),
    [
        ("snappy", b"whatever", UnsupportedEncoding, StatusCode.UNIMPLEMENTED),
        ("gzip", b"not gzip at all", ProtocolViolation, StatusCode.INVALID_ARGUMENT),
        ("gzip", gzip.compress(b"x" * 100)[:-12], ProtocolViolation, StatusCode.INVALID_ARGUMENT),
        (None, gzip.compress(b"x"), ProtocolViolation, StatusCode.INVALID_ARGUMENT),
    ],
)
def test_undecodable_compressed_messages_fail_only_their_stream(
    encoding: str | None, payload: bytes, error: type[Exception], status: StatusCode
) -> None:
    """Unsupported encoding -> UNIMPLEMENTED; corrupt, truncated, or compressed without an encoding ->
    INVALID_ARGUMENT. Earlier messages on the stream are still delivered first."""
    pair = Pair(limits())
    headers = (("grpc-encoding", encoding),) if encoding else ()
    stream_id = pair.open(headers=headers)
    pair.send(stream_id, frame(b"before") + frame(payload, compressed=True))
    assert pair.server.next_message(stream_id) == b"before"
    with pytest.raises(error) as info:
        pair.server.next_message(stream_id)
    assert info.value.status().status_code == status
    with pytest.raises(error):
        pair.server.next_message(stream_id)  # sticky
    assert pair.open() > stream_id  # the connection still takes new streams


def test_half_close_inside_a_message_is_a_protocol_violation() -> None:
    pair = Pair(limits())
    stream_id = pair.open()
    pair.send(stream_id, frame(b"whole") + frame(b"cut short")[:7], end=True)
    assert pair.server.next_message(stream_id) == b"whole"
    with pytest.raises(ProtocolViolation):
        pair.server.next_message(stream_id)


def test_half_close_after_whole_messages_ends_with_none() -> None:
    pair = Pair(limits())
    stream_id = pair.open()
    pair.send(stream_id, frame(b"one"), end=True)
    assert pair.server.next_message(stream_id) == b"one"
    assert pair.server.next_message(stream_id) is None
    assert pair.server.next_message(stream_id) is None


def test_headers_only_request_with_end_stream_is_accepted() -> None:
    """HEADERS with END_STREAM (a call with no messages) is a valid request (purerpc rejects it)."""
    pair = Pair(limits())
    stream_id = pair.open(end=True)
    assert any(isinstance(e, RequestStarted) and e.request.stream_id == stream_id for e in pair.server_events)
    assert pair.server.next_message(stream_id) is None


def test_request_metadata_timeout_and_encoding_are_parsed() -> None:
    pair = Pair(limits())
    pair.open(headers=(("grpc-timeout", "1500m"), ("x-peer", "p1"), ("grpc-encoding", "gzip")))
    started = next(e for e in pair.server_events if isinstance(e, RequestStarted))
    assert started.request.path == PATH
    assert started.request.timeout == 1.5
    assert started.request.message_encoding == "gzip"
    assert ("x-peer", "p1") in started.request.metadata


def test_non_grpc_request_is_answered_without_a_handler() -> None:
    """A request that is not gRPC gets INVALID_ARGUMENT in a trailers-only response, and RST(NO_ERROR)."""
    pair = Pair(limits())
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        stream_id,
        [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "x"), ("content-type", "text/plain")],
    )
    pair.exchange()
    assert any(isinstance(e, RequestRejected) for e in pair.server_events)
    assert pair.headers_received(stream_id)["grpc-status"] == str(StatusCode.INVALID_ARGUMENT.value)
    assert any(isinstance(e, h2.events.StreamReset) and e.error_code == 0 for e in pair.client_events)
    assert pair.server.open_streams == 0


def test_finish_sends_trailers_with_percent_encoded_message() -> None:
    """Trailers after a started response carry grpc-status and the spec's percent-encoding; RST(NO_ERROR)
    follows when the client had not half-closed."""
    pair = Pair(limits())
    stream_id = pair.open()
    pair.server.start_response(stream_id)
    assert pair.server.finish(stream_id, Status(StatusCode.ABORTED, "50% über\n"), response_started=True)
    pair.exchange()
    trailers = pair.headers_received(stream_id)
    assert trailers[":status"] == "200"
    assert trailers["grpc-status"] == "10"
    assert trailers["grpc-message"] == "50%25 %C3%BCber%0A"
    assert any(isinstance(e, h2.events.StreamReset) and e.error_code == 0 for e in pair.client_events)


def test_shutdown_status_and_goaway() -> None:
    """UNAVAILABLE trailers-only, then one GOAWAY(NO_ERROR) naming the last stream."""
    pair = Pair(limits())
    stream_id = pair.open()
    pair.server.finish(stream_id, SHUTDOWN_STATUS, response_started=False)
    assert pair.server.goaway()
    assert not pair.server.goaway()
    pair.exchange()
    assert pair.headers_received(stream_id)["grpc-message"] == "edge shutting down"
    goaway = [e for e in pair.client_events if isinstance(e, h2.events.ConnectionTerminated)]
    assert len(goaway) == 1 and goaway[0].error_code == 0 and goaway[0].last_stream_id == stream_id


def test_ping_is_answered() -> None:
    """Client PINGs get a PING ACK (h2 queues it; the shell flushes after every read)."""
    pair = Pair(limits())
    pair.client.ping(b"12345678")
    pair.exchange()
    acks = [e for e in pair.client_events if isinstance(e, h2.events.PingAckReceived)]
    assert [a.ping_data for a in acks] == [b"12345678"]


def test_percent_encoding_matches_the_grpc_spec() -> None:
    assert percent_encode_message("plain text ~!") == "plain text ~!"
    assert percent_encode_message("100%") == "100%25"
    assert percent_encode_message("é\t") == "%C3%A9%09"


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 64))
def test_parser_reassembles_any_split(messages: list[bytes], chunk: int) -> None:
    """Property: any message sequence, fed in any chunk size, comes back identical."""
    wire = b"".join(frame(m) for m in messages)
    parser = MessageParser(limit=300, encoding=None)
    out = []
    for start in range(0, len(wire), chunk):
        parser.feed(wire[start : start + chunk])
        while (message := parser.next_message()) is not None:
            out.append(message)
    assert out == messages
    assert not parser.mid_message


def test_late_window_update_and_rst_on_a_closed_stream_are_ignored() -> None:
    """RFC 9113 5.1: WINDOW_UPDATE / RST_STREAM for a stream that just closed must be ignored. h2 3.2
    makes them a connection error once it has forgotten the stream (after the next stream opens), which
    grpcio triggers in practice; the protocol drops them, even when split across reads."""
    pair = Pair(limits())
    first = pair.open(end=True)
    pair.server.start_response(first)
    pair.server.send_data(first, frame(b"response"))
    assert pair.server.finish(first, Status(StatusCode.OK), response_started=True)
    pair.exchange()
    second = pair.open()  # h2 forgets the closed first stream here
    late = (
        hyperframe.frame.WindowUpdateFrame(first, window_increment=13).serialize()
        + hyperframe.frame.RstStreamFrame(first, error_code=8).serialize()
        + hyperframe.frame.DataFrame(second, data=frame(b"still fine")).serialize()
    )
    for byte in late:  # one byte per read: frames split at every possible point
        pair.server_events += pair.server.receive_data(bytes([byte]))
    assert not pair.server.goaway_sent
    assert pair.server.next_message(second) == b"still fine"


def test_non_utf8_metadata_rejects_the_call_not_the_connection() -> None:
    """A header value that is not UTF-8 answers that call with INVALID_ARGUMENT; other calls go on."""
    pair = Pair(limits())
    bad = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        bad,
        [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()), (b":authority", b"x"),
            (b"te", b"trailers"), (b"content-type", b"application/grpc"), (b"x-bad", b"\xff\xfe"),
        ],
    )
    pair.exchange()
    assert any(isinstance(e, RequestRejected) and e.stream_id == bad for e in pair.server_events)
    assert pair.headers_received(bad)["grpc-status"] == "3"
    good = pair.open()
    pair.send(good, frame(b"ok"))
    assert pair.server.next_message(good) == b"ok"


_FRAMES = st.one_of(
    st.builds(lambda sid, inc: hyperframe.frame.WindowUpdateFrame(sid, window_increment=inc).serialize(),
              st.integers(0, 9), st.integers(1, 1000)),
    st.builds(lambda sid, code: hyperframe.frame.RstStreamFrame(sid, error_code=code).serialize(),
              st.integers(1, 9), st.integers(0, 13)),
    st.builds(lambda sid, data: hyperframe.frame.DataFrame(sid, data=data).serialize(),
              st.integers(1, 9), st.binary(max_size=40)),
    st.builds(lambda data: hyperframe.frame.PingFrame(0, opaque_data=data).serialize(), st.binary(min_size=8, max_size=8)),
)


@given(st.lists(_FRAMES, max_size=20), st.lists(st.integers(1, 30), min_size=1, max_size=10))
def test_late_frame_splitter_is_lossless(frames: list[bytes], cuts: list[int]) -> None:
    """Property: whatever the read boundaries, the pieces re-join to the exact input, and every tagged
    piece is one whole RST_STREAM/WINDOW_UPDATE frame of a non-zero stream, tagged with that stream."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    wire = preface + b"".join(frames)
    splitter = LateFrameSplitter()
    pieces: list[tuple[bytes, int | None]] = []
    position = 0
    step = 0
    while position < len(wire):
        size = cuts[step % len(cuts)]
        pieces += splitter.split(wire[position : position + size])
        position += size
        step += 1
    assert b"".join(p for p, _ in pieces) == wire
    tagged = [(p, sid) for p, sid in pieces if sid is not None]
    expected = [f for f in frames if f[3] in (0x3, 0x8) and int.from_bytes(f[5:9], "big")]
    assert [p for p, _ in tagged] == expected
    assert all(sid == int.from_bytes(p[5:9], "big") for p, sid in tagged)


def test_header_list_size_is_bounded() -> None:
    """Request headers over max_header_list_bytes end the connection (h2/hpack refuse to decode them:
    GOAWAY), instead of being held in memory."""
    pair = Pair(limits(max_header_list_bytes=2048))
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        stream_id,
        [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "x"), ("te", "trailers"),
         ("content-type", "application/grpc"), ("x-big", "v" * 4000)],
    )
    with pytest.raises(h2.exceptions.ProtocolError):
        pair.server.receive_data(pair.client.data_to_send())
    assert pair.server.goaway_sent
    pair.client_events += pair.client.receive_data(pair.server.data_to_send())
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in pair.client_events)


def test_streams_over_the_advertised_limit_are_refused() -> None:
    """A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS: h2 3.2 treats the extra stream as a
    connection error (GOAWAY). Well-behaved clients (grpcio) queue instead: see test_calls."""
    pair = Pair(limits(max_concurrent_streams=2))
    pair.open()
    pair.open()
    third = pair.client.get_next_available_stream_id()
    pair.client.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 10  # ignore our limit
    pair.client.remote_settings.acknowledge()
    pair.client.send_headers(
        third, [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "x"),
                ("te", "trailers"), ("content-type", "application/grpc")]
    )
    with pytest.raises(h2.exceptions.ProtocolError):
        pair.server.receive_data(pair.client.data_to_send())
