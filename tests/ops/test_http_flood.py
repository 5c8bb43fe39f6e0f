"""The ops HTTP port under a slowloris flood: probes still answer, the edge's connection table stays
within its bounds, and each connection's head deadline (MockClock, over socket pairs: no real seconds).

Flood tests use real loopback sockets on the real clock and no sleeps: the flood is opened, then the
probes are made at once, well inside HEAD_TIMEOUT."""

from __future__ import annotations

import socket

import trio
import trio.testing
from structlog.testing import capture_logs

from edge.config import Address
from edge.grpc.refusals import HTTP_EVICTED, HTTP_HEAD_TIMEOUT, log_summary
from edge.ops.http import HEAD_TIMEOUT, KEEPALIVE_TIMEOUT, serve_ops_http, serve_ops_http_connection
from edge.ops.http_slots import ConnectionSlots
from edge.ops.runtime import EdgeRuntime

SLOWLORIS = 300
MAX_TOTAL = 64
MAX_PER_ADDRESS = 16


async def probe(port: int, source: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        return data


async def open_slowloris(port: int, sources: list[str], count: int) -> list[trio.SocketStream]:
    """`count` connections that send half a request head and then nothing (spread over `sources`)."""
    held = []
    for index in range(count):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=sources[index % len(sources)])
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await stream.send_all(b"GET /metr")
        held.append(stream)
    return held


async def flood_then_probe(sources: list[str], probe_source: str) -> tuple[EdgeRuntime, ConnectionSlots, list[bytes]]:
    runtime = EdgeRuntime.create("e")
    slots = ConnectionSlots(MAX_TOTAL, MAX_PER_ADDRESS, busy_grace=1.0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_ops_http(Address("127.0.0.1", 0), runtime, slots=slots, task_status=task_status))
        held = await open_slowloris(port, sources, SLOWLORIS)
        await trio.testing.wait_all_tasks_blocked()
        assert len(slots) <= MAX_TOTAL
        for source in {*sources}:
            assert slots.held_by(source) <= MAX_PER_ADDRESS
        replies = [await probe(port, probe_source) for _ in range(20)]
        for stream in held:
            stream.socket.close()
        nursery.cancel_scope.cancel()
    return runtime, slots, replies


async def test_healthz_answers_through_slowloris_from_one_address():
    """400 slowloris connections from 127.0.0.1: they only ever displace each other (16 per address);
    /healthz from another address answers every time."""
    runtime, _slots, replies = await flood_then_probe(["127.0.0.1"], "127.0.0.2")
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    assert runtime.refusals.totals[HTTP_EVICTED] >= SLOWLORIS - MAX_PER_ADDRESS


async def test_healthz_answers_through_slowloris_from_many_addresses_and_its_own():
    """400 slowloris connections from 8 addresses fill the table (64): each new connection, the probe's
    included, closes the oldest idle one instead of being refused; the probe comes from one of the
    flooding addresses, and still answers every time."""
    sources = [f"127.0.0.{n}" for n in range(1, 9)]
    runtime, _slots, replies = await flood_then_probe(sources, "127.0.0.1")
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    assert runtime.refusals.totals[HTTP_EVICTED] >= SLOWLORIS - MAX_TOTAL
    with capture_logs() as logs:
        log_summary(runtime.refusals, 10.0)
    [summary] = logs
    assert summary["event"] == "refusals_summary" and summary["by_cause"][HTTP_EVICTED] >= SLOWLORIS - MAX_TOTAL


async def answered_once(nursery: trio.Nursery, runtime: EdgeRuntime, slots: ConnectionSlots) -> trio.abc.Stream:
    """A connection over a memory stream pair that has had one /healthz answered; its client end."""
    server, client = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_ops_http_connection(server, runtime=runtime, slots=slots, remote_address=("10.0.0.1", 2)))
    await client.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b""
    while not reply.endswith(b"ok\n"):
        reply += await client.receive_some()
    return client


async def test_head_deadline_and_keepalive_wait(autojump_clock):
    """A new connection owes its head within HEAD_TIMEOUT (counted as http_head_timeout); a kept-alive
    one may wait KEEPALIVE_TIMEOUT for its next request's first byte (not counted), and from that byte
    owes the rest of the head within HEAD_TIMEOUT."""
    runtime = EdgeRuntime.create("e")
    slots = ConnectionSlots(MAX_TOTAL, MAX_PER_ADDRESS, busy_grace=1.0)
    async with trio.open_nursery() as nursery:
        # 1: half a head, then nothing.
        server, client = trio.testing.memory_stream_pair()
        began = trio.current_time()
        nursery.start_soon(lambda: serve_ops_http_connection(server, runtime=runtime, slots=slots, remote_address=("10.0.0.1", 1)))
        await client.send_all(b"GET /hea")
        assert await client.receive_some() == b""
        assert trio.current_time() - began == HEAD_TIMEOUT
        assert runtime.refusals.totals[HTTP_HEAD_TIMEOUT] == 1 and len(slots) == 0

        # 2: one request answered, a keep-alive wait, then a head that stalls after its first bytes.
        client = await answered_once(nursery, runtime, slots)
        await trio.sleep(KEEPALIVE_TIMEOUT - 1)
        sent = trio.current_time()
        await client.send_all(b"GET /he")
        assert await client.receive_some() == b""
        assert trio.current_time() - sent == HEAD_TIMEOUT
        assert runtime.refusals.totals[HTTP_HEAD_TIMEOUT] == 2

        # 3: a kept-alive connection that says nothing more is closed at KEEPALIVE_TIMEOUT, not counted.
        client = await answered_once(nursery, runtime, slots)
        answered = trio.current_time()
        assert await client.receive_some() == b""
        assert trio.current_time() - answered == KEEPALIVE_TIMEOUT
        assert runtime.refusals.totals[HTTP_HEAD_TIMEOUT] == 2 and len(slots) == 0


def test_slots_close_the_oldest_idle_not_the_newest():
    """Pure table: per-address first, then the oldest of all; busy slots are spared for `busy_grace`."""
    slots = ConnectionSlots(max_total=3, max_per_address=2, busy_grace=1.0)
    a1, _ = slots.open("a", 0.0)
    a2, _ = slots.open("a", 1.0)
    assert a1 is not None and a2 is not None
    a3, closed = slots.open("a", 2.0)
    assert closed == [a1] and slots.held_by("a") == 2
    b1, closed = slots.open("b", 3.0)
    assert closed == [] and len(slots) == 3
    assert a2 is not None and a3 is not None and b1 is not None
    a2.busy_since = 3.5  # answering a request
    c1, closed = slots.open("c", 4.0)
    assert closed == [a3]  # a2 is busy (0.5 s < busy_grace): the next oldest goes
    a2.busy_since = 2.0
    c2, closed = slots.open("c", 4.0)
    assert closed == [a2]  # busy for 2 s: a client not reading its reply holds nothing
    for slot in (b1, c1, c2):
        assert slot is not None
        slot.busy_since = 4.0
    refused, closed = slots.open("d", 4.5)
    assert refused is None and closed == [] and len(slots) == 3
