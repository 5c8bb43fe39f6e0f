"""The frame-level defences without a loop: `FrameScanner`, `FrameGuard`'s budgets, and what
`GrpcServerProtocol` does with them (GOAWAY codes, the outbound bound, held windows and their budget).

Rules: no I/O and no Trio; time is a plain number passed in; each test states one property.
"""

from __future__ import annotations

import h2.events
import hpack
import hyperframe.frame
import pytest
from h2.errors import ErrorCodes
from hypothesis import given
from hypothesis import strategies as st

from edge.grpc.errors import OverBudget
from edge.grpc.events import NOT_READY
from edge.grpc.frame_guard import (
    Budget,
    ConnectionAbuse,
    FrameBudgets,
    FrameGuard,
    FrameHeader,
    FrameScanner,
)
from edge.grpc.limits import HeldBytesBudget

from .support import ping_frame, raw_frame
from .test_protocol_sansio import PATH, Pair, frame, limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# ------------------------------------------------------------------------------------------- scanner


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
def test_the_scanner_finds_every_header_however_the_bytes_are_cut(cuts: list[int]) -> None:
    """The preface, then frames of several sizes, fed in arbitrary pieces: the same headers, in order."""
    frames = [raw_frame(0x4), ping_frame(1), raw_frame(0x0, b"x" * 30, stream_id=1), raw_frame(0x8, b"\0\0\0\1", stream_id=1)]
    wire = PREFACE + b"".join(frames) * 3
    scanner = FrameScanner()
    seen: list[FrameHeader] = []
    position = 0
    for cut in cuts * (len(wire) // len(cuts) + 1):
        if position >= len(wire):
            break
        seen += scanner.feed(wire[position : position + cut])
        position += cut
    assert [(h.type, h.length, h.stream_id) for h in seen] == [(4, 0, 0), (6, 8, 0), (0, 30, 1), (8, 4, 1)] * 3


def test_a_header_is_reported_when_its_ninth_byte_arrives_not_its_payload() -> None:
    scanner = FrameScanner(preface_bytes=0)
    header = raw_frame(0x0, length=0xFFFFFF, stream_id=1)
    assert scanner.feed(header[:8]) == []
    [found] = scanner.feed(header[8:])
    assert found.length == 0xFFFFFF  # the most 24 bits declare: 16 MiB - 1


# -------------------------------------------------------------------------------------------- guard


def test_a_frame_over_the_max_size_is_refused_at_its_header() -> None:
    guard = FrameGuard(FrameBudgets(), max_frame_size=16_384)
    guard.check(PREFACE + raw_frame(0x0, b"x" * 16_384, stream_id=1), now=0.0)
    with pytest.raises(ConnectionAbuse) as caught:
        guard.check(raw_frame(0x0, length=16_385, stream_id=1), now=0.0)
    assert (caught.value.error_code, caught.value.reason) == (ErrorCodes.FRAME_SIZE_ERROR, "frame_too_large")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (ping_frame(), "ping_flood"),
        (raw_frame(0x4), "settings_flood"),
        (raw_frame(0x3, b"\0\0\0\x08", stream_id=1), "reset_flood"),
        (raw_frame(0x8, b"\0\0\0\1", stream_id=0), "window_update_flood"),
        (raw_frame(0x0, stream_id=1), "empty_frames_flood"),
        (raw_frame(0x9, stream_id=1), "empty_frames_flood"),
    ],
)
def test_each_budget_allows_its_burst_then_says_enhance_your_calm(wire: bytes, reason: str) -> None:
    budget = Budget(rate=10.0, burst=5.0)
    budgets = FrameBudgets(ping=budget, settings=budget, reset=budget, empty=budget, window_update=budget)
    guard = FrameGuard(budgets, max_frame_size=16_384)
    guard.check(PREFACE + wire * 5, now=0.0)
    with pytest.raises(ConnectionAbuse) as caught:
        guard.check(wire, now=0.0)
    assert (caught.value.error_code, caught.value.reason) == (ErrorCodes.ENHANCE_YOUR_CALM, reason)


def test_a_budget_refills_at_its_rate() -> None:
    """Burst 5 at 10/s: 5 at once, then one every 0.11 s for ever; but never five more at once."""
    guard = FrameGuard(FrameBudgets(ping=Budget(rate=10.0, burst=5.0)), max_frame_size=16_384)
    guard.check(PREFACE + ping_frame() * 5, now=0.0)
    for step in range(1, 101):
        guard.check(ping_frame(), now=step * 0.11)
    with pytest.raises(ConnectionAbuse):
        guard.check(ping_frame() * 5, now=11.0)


def test_frames_that_end_something_are_not_empty() -> None:
    """Empty DATA with END_STREAM (a half-close) and CONTINUATION with END_HEADERS are ordinary."""
    guard = FrameGuard(FrameBudgets(empty=Budget(rate=0.001, burst=1.0)), max_frame_size=16_384)
    ordinary = raw_frame(0x0, flags=0x1, stream_id=1) + raw_frame(0x9, flags=0x4, stream_id=1)
    guard.check(PREFACE + ordinary * 50, now=0.0)


# ------------------------------------------------------------------------------------------ protocol


def goaway_code(pair: Pair) -> int:
    events = pair.client.receive_data(pair.server.data_to_send())
    [terminated] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    return int(terminated.error_code)


def test_the_protocol_answers_an_oversized_header_with_goaway_frame_size_error() -> None:
    pair = Pair(limits())
    with pytest.raises(ConnectionAbuse):
        pair.server.receive_data(raw_frame(0x0, length=0xFFFFFF, stream_id=1))
    assert goaway_code(pair) == ErrorCodes.FRAME_SIZE_ERROR
    assert pair.server.inbound_buffered_bytes == 0


def test_a_ping_flood_gets_goaway_enhance_your_calm() -> None:
    pair = Pair(limits(frame_budgets=FrameBudgets(ping=Budget(rate=1.0, burst=100.0))))
    pair.server.receive_data(ping_frame() * 100)
    pair.server.data_to_send()
    with pytest.raises(ConnectionAbuse):
        pair.server.receive_data(ping_frame())
    assert goaway_code(pair) == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_client_that_does_not_read_is_closed_not_buffered_for() -> None:
    """PINGs within a (raised) budget, replies never read: past the outbound bound the connection is
    refused without a flush (`flush` False) and nothing more is queued."""
    unlimited = Budget(rate=1e9, burst=1e9)
    pair = Pair(limits(frame_budgets=FrameBudgets(ping=unlimited), max_pending_outbound_bytes=64 * 1024))
    with pytest.raises(ConnectionAbuse) as caught:
        for n in range(10_000):
            pair.server.receive_data(ping_frame(n))
    assert (caught.value.reason, caught.value.flush) == ("not_reading", False)
    assert n * 17 < 70 * 1024  # refused at the bound, not after every PING
    assert pair.server.pending_outbound_bytes < 1024  # the replies were dropped, GOAWAY queued


def test_a_header_field_with_an_empty_name_is_a_protocol_error() -> None:
    """h2 3.2 would raise IndexError out of its header validation: GOAWAY PROTOCOL_ERROR instead."""
    pair = Pair(limits())
    headers = hyperframe.frame.HeadersFrame(1)
    headers.data = hpack.Encoder().encode([(":method", "POST"), (":path", PATH), ("", "")])
    headers.flags.add("END_HEADERS")
    with pytest.raises(ConnectionAbuse) as caught:
        pair.server.receive_data(headers.serialize())
    assert caught.value.reason == "empty_header_name"
    assert goaway_code(pair) == ErrorCodes.PROTOCOL_ERROR


# ------------------------------------------------------------------------------------- held streams


def held_pair(budget: HeldBytesBudget) -> Pair:
    return Pair(
        limits(
            stream_window_bytes=64 * 1024,
            initial_window_bytes=16 * 1024,
            held_paths=frozenset({PATH}),
            held_budget=budget,
            max_message_bytes=256 * 1024,
        )
    )


def test_a_held_stream_holds_its_initial_window_until_opened() -> None:
    """Nothing is acknowledged before `open_window`: the client stops at 16 KiB of a 100 KiB message;
    once opened, the window grows and the whole message arrives."""
    budget = HeldBytesBudget(limit=1024 * 1024)
    pair = held_pair(budget)
    stream_id = pair.open()
    message = frame(b"r" * 100_000)
    sent = pair.send(stream_id, message)
    assert sent == 16 * 1024 and budget.held == 16 * 1024 - 5  # the 5-byte message prefix is parsed
    assert pair.server.next_message(stream_id) is NOT_READY
    assert pair.server.open_window(stream_id)
    pair.exchange()
    sent += pair.send(stream_id, message[sent:], end=True)
    assert sent == len(message)
    assert pair.server.next_message(stream_id) == b"r" * 100_000
    pair.server.admit(stream_id)
    assert budget.held == 0


def test_a_stream_that_would_take_the_budget_over_fails_alone() -> None:
    """Budget 20 KiB, two held streams: the first holds 16 KiB, the second fails with OverBudget
    (RESOURCE_EXHAUSTED) when its bytes do not fit; the budget never goes over its limit."""
    budget = HeldBytesBudget(limit=20 * 1024)
    pair = held_pair(budget)
    first, second = pair.open(), pair.open()
    pair.send(first, frame(b"a" * 100_000))
    pair.send(second, frame(b"b" * 100_000))
    assert budget.peak <= budget.limit and budget.refused == 1
    with pytest.raises(OverBudget):
        pair.server.next_message(second)
    assert pair.server.stream_buffered_bytes(first) == 16 * 1024 - 5
    pair.server.finish(first, None, response_started=False)
    assert budget.held == 0
