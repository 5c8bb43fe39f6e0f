"""docs/design.md#purerpc-reset-ignored: a client that cancels, resets, drops or dies is noticed at once.

Rules for these tests: real sockets, real TLS (trustme), real grpcio clients (grpc.aio on its own
asyncio loop in a worker thread, or a client subprocess); no real-time sleeps, only waits for a
condition under a deadline. Latencies are measured with time.perf_counter in the test only.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import grpc
import trio

from edge.grpc import ConnectionLost, GrpcServerConfig, ServerStream, Status, StreamReset
from testing.grpcio_peer import OWN_CONNECTION
from testing.harness import running_server
from testing.tls import TlsFiles

from .support import RawH2Client, bytes_stream_method, grpc_frame, own_tcp_sockets, wait_for

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"


class ResetRecorder:
    """A handler that echoes one "started" message, then reads until the stream ends, recording how."""

    def __init__(self) -> None:
        self.started = 0
        self.outcomes: dict[str, int] = {}
        self.seen_at: dict[bytes, float] = {}

    async def __call__(self, stream: ServerStream) -> Status | None:
        self.started += 1
        label = await stream.receive_message() or b""
        await stream.send_message(b"started:" + label)
        try:
            while await stream.receive_message() is not None:
                pass
        except StreamReset as exc:
            self.seen_at[label] = time.perf_counter()
            kind = type(exc).__name__
            self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
            raise
        self.outcomes["half_close"] = self.outcomes.get("half_close", 0) + 1
        return None


async def _cancel_and_drop(target: str, ca_pem: bytes, cancels: int, channels_to_close: int) -> dict[str, Any]:
    """grpc.aio: `cancels` calls on one channel cancelled one by one, then `channels_to_close` channels
    with one call each closed while the call is open. Returns when every call has been started."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    shared = grpc.aio.secure_channel(target, credentials, options=[OWN_CONNECTION])
    method = bytes_stream_method(shared, PATH)
    calls = []
    for i in range(cancels):
        call = method()
        await call.write(b"%d" % i)
        calls.append(call)
    for call in calls:
        assert (await call.read()).startswith(b"started:")
    sent_at = {}
    for i, call in enumerate(calls):
        sent_at[b"%d" % i] = time.perf_counter()
        call.cancel()
    dropped = []
    for i in range(channels_to_close):
        channel = grpc.aio.secure_channel(target, credentials, options=[OWN_CONNECTION])
        call = bytes_stream_method(channel, PATH)()
        await call.write(b"drop-%d" % i)
        assert (await call.read()).startswith(b"started:")
        dropped.append(channel)
    for i, channel in enumerate(dropped):
        sent_at[b"drop-%d" % i] = time.perf_counter()
        await channel.close()
    await shared.close()
    return sent_at


async def test_200_cancelled_and_dropped_calls_leave_nothing_behind(server_tls: Any, tls_files: TlsFiles) -> None:
    """180 cancelled calls and 20 closed channels over TLS: every handler sees StreamReset/ConnectionLost,
    every handler task ends, and no server socket is left (ESTABLISHED or CLOSE_WAIT)."""
    recorder = ResetRecorder()
    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=server_tls, max_concurrent_streams=250)
    async with running_server(config, {PATH: recorder}) as server:
        sent_at = await trio.to_thread.run_sync(
            asyncio.run, _cancel_and_drop(server.target, tls_files.ca_pem, 180, 20)
        )
        with trio.fail_after(10):
            await server.stats.wait_until(lambda s: s.streams_open == 0 and s.connections_open == 0)
        assert recorder.started == 200
        assert sum(recorder.outcomes.values()) == 200
        assert set(recorder.outcomes) <= {"StreamReset", "ConnectionLost"}
        assert recorder.outcomes.get("StreamReset", 0) >= 180
        assert server.stats.streams_reset + server.stats.streams_lost == 200
        # Sockets: nothing left on the server side; the listener is still there.
        await wait_for(lambda: not own_tcp_sockets(server.port)["server"])
        assert len(own_tcp_sockets(server.port)["listen"]) == 1
        assert server.stats.inbound_buffered_bytes == 0

    assert set(recorder.seen_at) == set(sent_at)
    latency = sorted(recorder.seen_at[label] - sent_at[label] for label in sent_at)
    # Loose, wall-clock: the reader hands the reset over as soon as the frame is read.
    assert latency[-1] < 2.0
    print(
        f"\nreset seen by handler after client cancel/close: min {latency[0] * 1000:.2f} ms, "
        f"median {statistics.median(latency) * 1000:.2f} ms, max {latency[-1] * 1000:.2f} ms over {len(latency)} calls"
    )


_KILLABLE_CLIENT = r"""
import sys, grpc, threading
channel = grpc.insecure_channel(sys.argv[1])
method = channel.stream_stream(sys.argv[2], request_serializer=lambda b: b, response_deserializer=lambda b: b)
never = threading.Event()
def requests():
    yield b"from-subprocess"
    never.wait()
responses = method(requests())
print(next(responses).decode(), flush=True)
never.wait()
"""


async def test_killed_client_process_is_noticed_at_once() -> None:
    """A client process killed with SIGKILL: the kernel closes its socket, the handler gets
    ConnectionLost right away (not at a heartbeat), and the server socket is closed."""
    recorder = ResetRecorder()
    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None)
    async with running_server(config, {PATH: recorder}) as server:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _KILLABLE_CLIENT, server.target, PATH], stdout=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            with trio.fail_after(20):
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(100)
                    assert chunk, "client exited early"
                    line += chunk
            assert line.startswith(b"started:from-subprocess")
            killed_at = time.perf_counter()
            process.kill()
            with trio.fail_after(10):
                await server.stats.wait_until(lambda s: s.streams_open == 0 and s.connections_open == 0)
        finally:
            process.kill()
            await process.wait()
            await process.stdout.aclose()
        assert recorder.outcomes == {"ConnectionLost": 1}
        noticed = recorder.seen_at[b"from-subprocess"] - killed_at
        assert noticed < 2.0
        print(f"\nkilled client noticed after {noticed * 1000:.2f} ms")
        assert not own_tcp_sockets(server.port)["server"]


async def test_tcp_reset_is_noticed_at_once() -> None:
    """A TCP RST (SO_LINGER 0 close) mid-call: ConnectionLost in the handler, socket closed."""
    lost = trio.Event()
    outcome: list[BaseException] = []

    async def handler(stream: ServerStream) -> None:
        await stream.send_message(b"hello")
        try:
            await stream.receive_message()
            await stream.receive_message()
        except ConnectionLost as exc:
            outcome.append(exc)
            lost.set()
            raise

    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None)
    async with running_server(config, {PATH: handler}) as server:
        sock_stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        client = RawH2Client(sock_stream)
        await client.start()
        stream_id = client.open_call(PATH)
        client.send_raw(stream_id, grpc_frame(b"first"))
        await client.flush()
        with trio.fail_after(10):
            while not client.messages(stream_id):
                await client.pump()
        sock_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock_stream.socket.close()
        with trio.fail_after(10):
            await lost.wait()
            await server.stats.wait_until(lambda s: s.connections_open == 0)
        assert "reset" in str(outcome[0]) or "closed" in str(outcome[0])
        assert not own_tcp_sockets(server.port)["server"]


async def test_half_close_ends_receive_with_none() -> None:
    """END_STREAM from the client: receive_message returns the queued messages, then None (not an error)."""
    received: list[bytes | None] = []

    async def handler(stream: ServerStream) -> Status:
        while True:
            message = await stream.receive_message()
            received.append(message)
            if message is None:
                return Status(0)

    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None)
    async with running_server(config, {PATH: handler}) as server:

        def call() -> list[bytes]:
            with grpc.insecure_channel(server.target) as channel:
                return list(bytes_stream_method(channel, PATH)(iter([b"a", b"b"])))

        assert await trio.to_thread.run_sync(call) == []
    assert received == [b"a", b"b", None]
