"""Helpers for the transport-abuse tests: a raw HTTP/2 attacker over real TLS, and a good grpcio peer
that registers (and says how long it took) while the attack runs."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable

import attrs
import h2.events
import h2.exceptions
import trio

from edge.proto import CONNECT_PATH
from tests.grpc.support import RawH2Client, raw_frame
from testing.grpcio_peer import GrpcioPeer


def client_tls(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    return context


async def open_attacker(port: int, ca_pem: bytes, *, receive_buffer: int | None = None) -> RawH2Client:
    """A raw h2 client over TLS with its preface and SETTINGS sent. `receive_buffer`: a small
    SO_RCVBUF for a client that does not read."""
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SSLStream(trio.SocketStream(sock), client_tls(ca_pem), server_hostname="localhost")
    await stream.do_handshake()
    client = RawH2Client(stream)
    await client.start()
    return client


@attrs.define
class Attack:
    """What one attacking connection managed before the edge closed it."""

    bytes_sent: int = 0
    rounds: int = 0
    goaway_code: int | None = None


async def flood(client: RawH2Client, make_round: Callable[[int], bytes], *, max_rounds: int = 100_000) -> Attack:
    """Send `make_round(i)` for i = 0, 1, ... until the edge closes the connection (bounded)."""
    attack = Attack()
    try:
        for i in range(max_rounds):
            data = make_round(i)
            await client.send_bytes(data)
            attack.bytes_sent += len(data)
            attack.rounds += 1
    except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
        pass  # the edge closed the connection (our h2 saw its GOAWAY)
    return attack


async def attack_and_watch(client: RawH2Client, make_round: Callable[[int], bytes], *, read: bool = True) -> Attack:
    """`flood` while reading the edge's frames (unless `read` is False); the GOAWAY code it got."""
    async with trio.open_nursery() as nursery:
        if read:
            nursery.start_soon(client.run)
        attack = await flood(client, make_round)
        if read:
            with trio.move_on_after(10):
                await client.wait_closed()
        nursery.cancel_scope.cancel()
    for event in client.events:
        if isinstance(event, h2.events.ConnectionTerminated):
            attack.goaway_code = int(event.error_code)
    with trio.move_on_after(1):
        await trio.aclose_forcefully(client.stream)
    return attack


def connect_headers_frame(client: RawH2Client, *, end: bool = False) -> bytes:
    """A Connect call's HEADERS frame (through the client's h2, so HPACK state stays right)."""
    client.open_call(CONNECT_PATH, end=end)
    return client.h2.data_to_send()


def rapid_reset_round(client: RawH2Client) -> Callable[[int], bytes]:
    def one(_: int) -> bytes:
        stream_id = client.h2.get_next_available_stream_id()
        headers = connect_headers_frame(client)
        client.h2.reset_stream(stream_id)
        return headers + client.h2.data_to_send()

    return one


def partial_message_round(client: RawH2Client, declared: int, sent: int) -> bytes:
    """A Connect stream whose first message declares `declared` bytes, of which `sent` are sent."""
    stream_id = client.h2.get_next_available_stream_id()
    headers = connect_headers_frame(client)
    body = declared.to_bytes(5, "big") + b"\0" * sent
    frames = [raw_frame(0x0, body[i : i + 16_384], stream_id=stream_id) for i in range(0, len(body), 16_384)]
    return headers + b"".join(frames)


@attrs.define
class GoodPeers:
    """Registers a fresh good peer every `interval` seconds while the attack runs; keeps the times."""

    port: int
    ca_pem: bytes
    metadata_for: Callable[[str], tuple[tuple[str, str], ...]]
    times: list[float] = attrs.field(factory=list)
    failures: list[str] = attrs.field(factory=list)

    async def register_one(self, peer_id: str, catalog: tuple[str, ...] = ()) -> float:
        peer = GrpcioPeer(self.port, root_certificates=self.ca_pem, metadata=self.metadata_for(peer_id), own_connection=True)
        try:
            started = trio.current_time()
            peer.register(peer_id, catalog=catalog)
            reply = await peer.receive_kind("registration_response", timeout=30)
            if not reply.registration_response.success:
                self.failures.append(reply.registration_response.error_message)
            took = trio.current_time() - started
            self.times.append(took)
            return took
        finally:
            peer.close()

    async def during(
        self, attack: Callable[[trio.Event], Awaitable[object]], *, peers: int = 3, started: Callable[[], bool]
    ) -> None:
        """Run `attack(stop)` until `started()` says it is under way, register `peers` good peers one after
        the other, then set `stop` and wait for the attack to end."""
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attack, stop)
            with trio.fail_after(30):
                while not started():
                    await trio.sleep(0.01)
            for i in range(peers):
                await self.register_one(f"good-{len(self.times)}-{i}")
            stop.set()


async def repeat_attack(
    port: int,
    ca_pem: bytes,
    make_rounds: Callable[[RawH2Client], Callable[[int], bytes]],
    results: list[Attack],
    stop: trio.Event,
    *,
    read: bool = True,
    receive_buffer: int | None = None,
) -> None:
    """One attacking connection after another (the edge closes each) until `stop` is set."""
    while not stop.is_set():
        client = await open_attacker(port, ca_pem, receive_buffer=receive_buffer)
        results.append(await attack_and_watch(client, make_rounds(client), read=read))
