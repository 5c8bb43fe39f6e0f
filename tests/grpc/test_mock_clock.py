"""docs/design.md#purerpc-needs-real-socket: `serve_grpc_connection` runs on any Trio stream, so timed
behaviour is tested under MockClock with `autojump_clock` (an hour of handler time takes no wall-clock time).

Rules: in-memory streams (`memory_stream_pair`, `lockstep_stream_pair`) or a `socketpair`, an h2 client
on the other end, `autojump_clock` for everything timed; no real-time sleeps.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h2.events
import pytest
import trio
import trio.testing

from edge.grpc import (
    ConnectionLost,
    GrpcServerConfig,
    GrpcServerStats,
    MessageTooLarge,
    ProtocolViolation,
    RateLimited,
    ServerStream,
    Status,
    StatusCode,
    StreamReset,
    serve_grpc_connection,
)
from testing.harness import server_metrics

from .conftest import TlsFiles
from .support import RawH2Client, grpc_frame

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"
CONFIG = GrpcServerConfig(host="in-memory", port=0, ssl_context=None)


async def _memory_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    return trio.testing.memory_stream_pair()


async def _socket_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


@asynccontextmanager
async def connection(
    routes: dict[str, Any], config: GrpcServerConfig = CONFIG, pair: Any = _memory_pair
) -> AsyncIterator[tuple[RawH2Client, GrpcServerStats, trio.CancelScope, trio.Event]]:
    """A served connection with a raw h2 client on the other end (already reading in the background)."""
    server_end, client_end = await pair()
    stats = GrpcServerStats()
    done = trio.Event()
    scope = trio.CancelScope()

    async def serve() -> None:
        with scope:
            await serve_grpc_connection(server_end, routes, config, metrics=server_metrics(), stats=stats)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = RawH2Client(client_end)
        await client.start()
        nursery.start_soon(client.run)
        yield client, stats, scope, done
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("pair", [_memory_pair, _socket_pair], ids=["memory_stream_pair", "socketpair"])
async def test_an_hour_long_handler_completes_instantly(autojump_clock: Any, pair: Any) -> None:
    """A handler sleeping 3600 s (Trio time) answers after exactly that much mock time."""

    async def sleepy(stream: ServerStream) -> Status:
        message = await stream.receive_message()
        await trio.sleep(3600)
        await stream.send_message(message or b"")
        return Status(StatusCode.OK)

    async with connection({PATH: sleepy}, pair=pair) as (client, stats, _, _):
        started = trio.current_time()
        stream_id = client.open_call(PATH)
        client.send_raw(stream_id, grpc_frame(b"tick"), end=True)
        await client.flush()
        await client.wait_until(lambda: stream_id in client.ended)
        assert trio.current_time() - started == pytest.approx(3600, abs=1)
        assert client.messages(stream_id) == [b"tick"]
        assert client.trailers(stream_id)["grpc-status"] == "0"
        assert stats.statuses["OK"] == 1


async def test_grpc_timeout_is_enforced(autojump_clock: Any) -> None:
    """grpc-timeout: the handler is cancelled at the client's deadline and the call ends with
    DEADLINE_EXCEEDED (purerpc parsed it and ignored it)."""
    cancelled_at: list[float] = []

    async def forever(stream: ServerStream) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    async with connection({PATH: forever}) as (client, _, _, _):
        started = trio.current_time()
        stream_id = client.open_call(PATH, extra_headers=(("grpc-timeout", "30S"),))
        await client.flush()
        await client.wait_until(lambda: stream_id in client.ended)
        assert client.trailers(stream_id)["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED.value)
        assert cancelled_at[0] - started == pytest.approx(30, abs=0.1)


async def test_a_handler_that_ignores_a_reset_is_cancelled_after_the_grace(autojump_clock: Any) -> None:
    """A handler busy elsewhere (not touching its stream) when the client resets: it is cancelled
    shutdown_grace seconds later, so it cannot leak; it can still see the reset via wait_terminated."""
    config = GrpcServerConfig(host="in-memory", port=0, ssl_context=None, shutdown_grace=7)
    noticed: list[StreamReset] = []
    ended_at: list[float] = []

    async def busy(stream: ServerStream) -> None:
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    noticed.append(await stream.wait_terminated())

                nursery.start_soon(watch)
                await trio.sleep_forever()
        finally:
            ended_at.append(trio.current_time())

    async with connection({PATH: busy}, config) as (client, stats, _, _):
        stream_id = client.open_call(PATH)
        await client.flush()
        await stats.wait_until(lambda s: s.streams_open == 1)
        client.h2.reset_stream(stream_id, 8)
        reset_at = trio.current_time()
        await client.flush()
        await stats.wait_until(lambda s: s.streams_open == 0)
        assert ended_at[0] - reset_at == pytest.approx(7, abs=0.1)
        assert isinstance(noticed[0], StreamReset) and noticed[0].error_code == 8
        assert stats.streams_reset == 1
        assert stats.statuses == {}  # nothing is sent on a reset stream


async def test_cancelling_the_connection_sends_unavailable_then_goaway(autojump_clock: Any) -> None:
    """Cancelling serve_grpc_connection: UNAVAILABLE "edge shutting down" on the open stream, GOAWAY,
    then the stream is closed; the handler saw Cancelled (never swallowed)."""
    saw_cancel: list[bool] = []

    async def hold(stream: ServerStream) -> None:
        try:
            await stream.receive_message()
        except trio.Cancelled:
            saw_cancel.append(True)
            raise

    async with connection({PATH: hold}) as (client, stats, scope, done):
        stream_id = client.open_call(PATH)
        await client.flush()
        await stats.wait_until(lambda s: s.streams_open == 1)
        scope.cancel()
        await done.wait()
        await client.wait_closed()
    trailers = client.trailers(stream_id)
    assert trailers["grpc-status"] == "14" and trailers["grpc-message"] == "edge shutting down"
    assert any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == 0 for e in client.events)
    assert saw_cancel == [True]
    # The bookkeeping after the close also runs when the close itself is cancelled.
    assert stats.connections_open == 0 and stats.streams_open == 0 and stats.inbound_buffered_bytes == 0


async def test_not_http2_closes_the_connection_and_its_streams(autojump_clock: Any) -> None:
    """Bytes that break HTTP/2 after a call started: GOAWAY(PROTOCOL_ERROR), the call's handler gets
    ConnectionLost, the connection task ends (nothing else is affected: it is the only boundary hit)."""
    lost: list[BaseException] = []

    async def reader(stream: ServerStream) -> None:
        try:
            await stream.receive_message()
        except ConnectionLost as exc:
            lost.append(exc)
            raise

    async with connection({PATH: reader}) as (client, stats, _, done):
        client.open_call(PATH)
        await client.flush()
        await stats.wait_until(lambda s: s.streams_open == 1)
        await client.send_bytes(b"\x00\x00\x08\x07\x00\x00\x00\x00\x01" + b"\xff" * 8)  # GOAWAY on stream 1
        await done.wait()
    assert len(lost) == 1 and "protocol error" in str(lost[0])
    assert stats.streams_lost == 1 and stats.connections_open == 0


async def test_preface_timeout(autojump_clock: Any) -> None:
    """A client that connects and never speaks HTTP/2 is dropped after tls_handshake_timeout."""
    server_end, client_end = trio.testing.memory_stream_pair()
    config = GrpcServerConfig(host="x", port=0, ssl_context=None, tls_handshake_timeout=3)
    started = trio.current_time()
    await serve_grpc_connection(server_end, {}, config, metrics=server_metrics())
    assert trio.current_time() - started == pytest.approx(3, abs=0.1)
    await client_end.aclose()


async def test_tls_handshake_timeout(autojump_clock: Any, server_tls: ssl.SSLContext) -> None:
    """An SSLStream whose client never sends a ClientHello is closed after tls_handshake_timeout."""
    server_end, client_end = trio.testing.memory_stream_pair()
    tls = trio.SSLStream(server_end, server_tls, server_side=True)
    config = GrpcServerConfig(host="x", port=0, ssl_context=server_tls, tls_handshake_timeout=4)
    stats = GrpcServerStats()
    metrics = server_metrics()
    started = trio.current_time()
    await serve_grpc_connection(tls, {}, config, metrics=metrics, stats=stats)
    assert trio.current_time() - started == pytest.approx(4, abs=0.1)
    assert stats.connections_open == 0
    assert metrics.registry.get_sample_value("giggityflix_edge_grpc_tls_handshake_failures_total", {"cause": "timeout"}) == 1
    await client_end.aclose()


async def test_tls_over_memory_streams_serves_calls(autojump_clock: Any, server_tls: ssl.SSLContext, tls_files: TlsFiles) -> None:
    """Real TLS (trustme) over a memory stream pair under MockClock, ALPN h2 negotiated."""
    server_end, client_end = trio.testing.memory_stream_pair()
    client_context = ssl.create_default_context(cadata=tls_files.ca_pem.decode())
    client_context.set_alpn_protocols(["h2"])
    client_tls = trio.SSLStream(client_end, client_context, server_hostname="localhost")

    async def echo_once(stream: ServerStream) -> None:
        await stream.send_message(await stream.receive_message() or b"")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(serve_grpc_connection, metrics=server_metrics()),
            trio.SSLStream(server_end, server_tls, server_side=True),
            {PATH: echo_once},
            CONFIG,
        )
        await client_tls.do_handshake()
        assert client_tls.selected_alpn_protocol() == "h2"
        client = RawH2Client(client_tls)
        await client.start()
        nursery.start_soon(client.run)
        stream_id = client.open_call(PATH)
        client.send_raw(stream_id, grpc_frame(b"secure"), end=True)
        await client.flush()
        await client.wait_until(lambda: stream_id in client.ended)
        assert client.messages(stream_id) == [b"secure"]
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_is_dropped_after_the_write_stall_timeout(autojump_clock: Any) -> None:
    """The server's writes block (lockstep stream, client never reads): after write_stall_timeout the
    connection is declared lost and the handler, blocked in send_message, gets ConnectionLost."""
    server_end, client_end = trio.testing.lockstep_stream_pair()
    config = GrpcServerConfig(host="x", port=0, ssl_context=None, write_stall_timeout=45)
    errors: list[BaseException] = []

    async def flood(stream: ServerStream) -> None:
        try:
            while True:
                await stream.send_message(b"z" * 10_000)
        except ConnectionLost as exc:
            errors.append(exc)
            raise

    stats = GrpcServerStats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_grpc_connection(server_end, {PATH: flood}, config, metrics=server_metrics(), stats=stats))
        client = RawH2Client(client_end)
        await client.start()
        # Read the server's preface so the connection is up, open a call, then stop reading for good.
        await client.pump()
        stream_id = client.open_call(PATH)
        await client.flush()
        await stats.wait_until(lambda s: s.streams_started == 1)
        stalled_from = trio.current_time()
        await stats.wait_until(lambda s: s.connections_open == 0)
        assert trio.current_time() - stalled_from == pytest.approx(45, abs=1)
        assert stream_id and errors and "stalled" in str(errors[0])
        nursery.cancel_scope.cancel()


async def test_a_lost_connection_is_closed_at_once_even_if_its_handler_lingers(autojump_clock: Any) -> None:
    """The client hangs up while the handler is busy elsewhere: the server's socket is closed right away
    (no CLOSE_WAIT while the handler finishes), and the handler is cancelled after shutdown_grace."""
    config = GrpcServerConfig(host="x", port=0, ssl_context=None, shutdown_grace=9)
    ended_at: list[float] = []

    async def linger(stream: ServerStream) -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended_at.append(trio.current_time())

    server_end, client_end = await _socket_pair()
    assert isinstance(server_end, trio.SocketStream)
    stats = GrpcServerStats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_grpc_connection(server_end, {PATH: linger}, config, metrics=server_metrics(), stats=stats))
        client = RawH2Client(client_end)
        await client.start()
        client.open_call(PATH)
        await client.flush()
        await stats.wait_until(lambda s: s.streams_open == 1)
        hung_up_at = trio.current_time()
        await client_end.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server_end.socket.fileno() == -1  # closed
        assert trio.current_time() - hung_up_at < 1
        await stats.wait_until(lambda s: s.connections_open == 0)
    assert ended_at[0] - hung_up_at == pytest.approx(9, abs=0.1)
    assert stats.streams_lost == 1


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (ExceptionGroup("one", [ExceptionGroup("nested", [MessageTooLarge(9, 5)])]), StatusCode.RESOURCE_EXHAUSTED,
         "received message of 9 bytes exceeds the limit of 5 bytes"),
        (ExceptionGroup("agree", [RateLimited("slow down"), RateLimited("slow down")]), StatusCode.RESOURCE_EXHAUSTED,
         "slow down"),
        (ExceptionGroup("disagree", [RateLimited("slow down"), ProtocolViolation("bad prefix")]), StatusCode.INTERNAL,
         "internal error"),
    ],
    ids=["nested-single", "agreeing", "disagreeing"],
)
async def test_a_group_of_stream_errors_is_judged_whole(autojump_clock: Any, raised: Any, code: Any, message: str) -> None:
    """Stream errors escaping a handler's own nursery arrive as a group: every one is looked at. They
    end the call with their status when they all agree, and with INTERNAL when they do not."""

    async def failing(stream: ServerStream) -> None:
        raise raised

    async with connection({PATH: failing}) as (client, stats, _, _):
        stream_id = client.open_call(PATH, end=True)
        await client.flush()
        await stats.wait_until(lambda s: s.streams_started == 1 and s.streams_open == 0)
        await client.wait_until(lambda: "grpc-status" in client.trailers(stream_id))
        assert client.trailers(stream_id)["grpc-status"] == str(code.value)
        assert client.trailers(stream_id).get("grpc-message") == message
