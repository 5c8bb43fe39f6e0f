"""`ServerStream.send_messages`: several messages handed to the connection at once, over real sockets.

What it claims: the messages reach a real grpcio client whole and in order, whatever the windows cut
them into; they share DATA frames and socket writes; `sent(i)` names exactly the messages wholly handed
over, also when the client resets the stream midway.

Rules: real loopback sockets; grpcio in a worker thread, a raw h2 client where exact window control is
needed; no real-time sleeps; every wait has a deadline.
"""

from __future__ import annotations

from typing import Any

import grpc
import h2.events
import trio

from edge.grpc import GrpcServerConfig, ServerStream, Status, StreamReset
from testing.grpcio_peer import OWN_CONNECTION
from testing.harness import running_server

from .support import RawH2Client, bytes_stream_method, grpc_frame

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"
SIZES = [1, 7, 70_000, 0, 300, 16_384, 16_385, 200_000, 5, 65_535]


def bodies() -> list[bytes]:
    return [bytes([n % 251]) * size for n, size in enumerate(SIZES)]


class StingyClient(RawH2Client):
    """Never gives window back: the server can send 65,535 bytes on a stream, then must wait."""

    def _data_received(self, event: h2.events.DataReceived) -> None:
        pass


async def start_call(client: RawH2Client) -> int:
    """Open a call on PATH and send it one message ("go"), which the handlers wait for."""
    await client.start()
    stream_id = client.open_call(PATH)
    client.send_raw(stream_id, grpc_frame(b"go"))
    await client.flush()
    return stream_id


def plain_config(**overrides: Any) -> GrpcServerConfig:
    return GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None, **overrides)


async def test_messages_sent_together_reach_grpcio_whole_and_in_order_through_small_windows() -> None:
    sent: list[int] = []

    async def burst(stream: ServerStream) -> Status | None:
        await stream.receive_message()
        await stream.send_messages(bodies(), sent=sent.append)
        return None

    def call(target: str) -> list[bytes]:
        with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
            return list(bytes_stream_method(channel, PATH)(iter([b"go"])))

    config = plain_config(stream_window_bytes=64 * 1024)
    async with running_server(config, {PATH: burst}) as server:
        with trio.fail_after(30):
            received = await trio.to_thread.run_sync(call, server.target)
    assert received == bodies()
    assert sent == list(range(len(SIZES)))


async def test_small_messages_sent_together_share_data_frames() -> None:
    """Fifty 20-byte messages handed over at once arrive in far fewer DATA frames than messages."""

    async def burst(stream: ServerStream) -> Status | None:
        await stream.receive_message()
        await stream.send_messages([b"m" * 20] * 50)
        return None

    async with running_server(plain_config(), {PATH: burst}) as server:
        client = RawH2Client(await trio.open_tcp_stream("127.0.0.1", server.port))
        async with client.stream:
            stream_id = await start_call(client)
            with trio.fail_after(10):
                while len(client.messages(stream_id)) < 50:
                    assert await client.pump()
        frames = [e for e in client.events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id]
    assert client.messages(stream_id) == [b"m" * 20] * 50
    assert len(frames) <= 2


async def test_sent_names_only_the_messages_wholly_handed_over_when_the_client_resets() -> None:
    """The client's window (65,535 bytes, never opened) takes the first message (40,005 bytes framed)
    and part of the second; the client then resets the stream. send_messages raises StreamReset, and
    `sent` was called for the first message only."""
    sent: list[int] = []
    outcome: list[BaseException] = []
    done = trio.Event()

    async def blocked(stream: ServerStream) -> Status | None:
        await stream.receive_message()
        try:
            await stream.send_messages([b"a" * 40_000, b"b" * 40_000, b"c" * 10], sent=sent.append)
        except StreamReset as error:
            outcome.append(error)
            raise
        finally:
            done.set()
        return None

    async with running_server(plain_config(), {PATH: blocked}) as server:
        client = StingyClient(await trio.open_tcp_stream("127.0.0.1", server.port))
        async with client.stream:
            stream_id = await start_call(client)
            with trio.fail_after(10):
                while len(client.data.get(stream_id, b"")) < 65_535:
                    assert await client.pump()
                client.h2.reset_stream(stream_id, 8)
                await client.flush()
                await done.wait()
    assert sent == [0]
    assert len(outcome) == 1 and isinstance(outcome[0], StreamReset)
