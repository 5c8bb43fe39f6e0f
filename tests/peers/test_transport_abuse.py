"""HTTP/2 frame and stream abuse on the peer port, one test per vector (docs/security.md, "Transport
threat model"): real TLS sockets, the edge's own peer server in `token` mode, a raw h2 attacker
(`tests.abuse_support`) and good grpcio peers registering while the attack runs.

Each test checks what the attacker gets (the GOAWAY code or the status), that the edge's own accounting
stays within its bound (`GrpcServerStats`, the held-bytes budget), and that good peers register during
the attack. Registration times are printed (run with -s), not asserted: the machine is shared.
Per-source-address throttling is off here (every client is 127.0.0.1), so only the defences under test act.
"""

from __future__ import annotations

import datetime
import os
import statistics

import attrs
import grpc
import pytest
import trio
from h2.errors import ErrorCodes

from edge.config import settings_for_tests
from edge.peers.tokens import mint_token
from edge.proto import CONNECT_PATH
from tests.peers.abuse_support import (
    Attack,
    GoodPeers,
    RawH2Client,
    connect_headers_frame,
    open_attacker,
    partial_message_round,
    rapid_reset_round,
    repeat_attack,
)
from tests.grpc.support import ping_frame, raw_frame
from testing.harness import MemoryBridge, running_edge

NOW = datetime.datetime.now(datetime.timezone.utc)


@attrs.frozen
class Secret:
    path: object
    value: bytes

    def metadata_for(self, peer_id: str) -> tuple[tuple[str, str], ...]:
        token = mint_token(peer_id, self.value, now=datetime.datetime.now(datetime.timezone.utc), ttl_sec=600)
        return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Secret:
    path = tmp_path_factory.mktemp("abuse") / "peer-token.secret"
    value = os.urandom(24).hex().encode()
    path.write_bytes(value + b"\n")
    path.chmod(0o600)
    return Secret(path, value)


def edge_settings(tls_files, secret: Secret, **overrides):
    values = {
        "grpc_use_tls": True,
        "grpc_cert_path": tls_files.cert_path,
        "grpc_key_path": tls_files.key_path,
        "peer_auth_mode": "token",
        "peer_token_hmac_secret_path": secret.path,
        "peer_registration_rate_per_address": 0.0,
    }
    if overrides.get("peer_auth_mode") == "none":
        del values["peer_token_hmac_secret_path"]
    return settings_for_tests(**{**values, **overrides})


def report(vector: str, attacks: list[Attack], good: GoodPeers, **figures: object) -> None:
    times = sorted(good.times)
    print(
        f"\n{vector}: {len(attacks)} attacking connections, {sum(a.rounds for a in attacks)} rounds sent; "
        f"good peers registered in p50 {statistics.median(times) * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms; "
        + ", ".join(f"{k} {v}" for k, v in figures.items())
    )


async def run_vector(
    tls_files, secret: Secret, make_rounds, *, reason: str, code: ErrorCodes, read: bool = True, **settings
) -> tuple[list[Attack], GoodPeers, object]:
    """Attack connection after connection with `make_rounds` while three good peers register; each
    attacking connection must end with GOAWAY `code` (when it reads) and the edge count it as `reason`."""
    async with running_edge(edge_settings(tls_files, secret, **settings), bridge=MemoryBridge()) as edge:
        stats = edge.stats
        attacks: list[Attack] = []
        good = GoodPeers(edge.port, tls_files.ca_pem, secret.metadata_for)

        async def attack(stop: trio.Event) -> None:
            await repeat_attack(
                edge.port, tls_files.ca_pem, make_rounds, attacks, stop, read=read, receive_buffer=None if read else 4096
            )

        await good.during(attack, started=lambda: stats.connections_refused[reason] >= 1)
        assert good.failures == [] and len(good.times) == 3
        assert attacks and stats.connections_refused[reason] >= len(attacks) - 1
        if read:
            assert {a.goaway_code for a in attacks[:-1]} == {int(code)}
        assert stats.inbound_buffered_bytes <= 4 * 1024 * 1024  # the good peers' registrations at most
        return attacks, good, stats


# ------------------------------------------------------------------------------------------- vectors


async def test_a_frame_declared_over_the_max_size_is_refused_at_its_header(tls_files, secret):
    """One header declaring 16 MiB (then its payload, as fast as the socket takes it): GOAWAY
    FRAME_SIZE_ERROR as soon as the header arrives; the attacker gets far less than 16 MiB onto the wire."""

    def rounds(_client: RawH2Client):
        return lambda i: raw_frame(0x0, length=0xFFFFFF, stream_id=1) if i == 0 else b"\0" * 65_536

    attacks, good, _ = await run_vector(tls_files, secret, rounds, reason="frame_too_large", code=ErrorCodes.FRAME_SIZE_ERROR)
    assert max(a.bytes_sent for a in attacks) < 8 * 1024 * 1024  # socket buffers, not the frame
    report("16 MiB frame header", attacks, good, most_bytes_sent=max(a.bytes_sent for a in attacks))


async def test_a_ping_flood_is_cut_off(tls_files, secret):
    """PINGs as fast as the attacker can write them, reading the replies: GOAWAY ENHANCE_YOUR_CALM
    after the burst (100), not millions later."""
    attacks, good, _ = await run_vector(
        tls_files, secret, lambda _c: lambda i: ping_frame(i) * 50, reason="ping_flood", code=ErrorCodes.ENHANCE_YOUR_CALM
    )
    report("PING flood (reading)", attacks, good)


async def test_a_settings_flood_from_a_client_that_does_not_read_is_cut_off(tls_files, secret):
    """SETTINGS frames from a client with a 4 KiB receive buffer that never reads its acknowledgements:
    closed after the burst (20), nothing queued for it."""
    attacks, good, stats = await run_vector(
        tls_files, secret, lambda _c: lambda i: raw_frame(0x4) * 50, reason="settings_flood",
        code=ErrorCodes.ENHANCE_YOUR_CALM, read=False,
    )
    report("SETTINGS flood (not reading)", attacks, good)


async def test_a_ping_flood_from_a_client_that_does_not_read_is_cut_off(tls_files, secret):
    attacks, good, _ = await run_vector(
        tls_files, secret, lambda _c: lambda i: ping_frame(i) * 50, reason="ping_flood",
        code=ErrorCodes.ENHANCE_YOUR_CALM, read=False,
    )
    report("PING flood (not reading)", attacks, good)


async def test_rapid_reset_is_cut_off(tls_files, secret):
    """HEADERS + RST_STREAM on Connect in a loop (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM once the
    client has reset twice MAX_CONCURRENT_STREAMS streams faster than the budget refills."""
    attacks, good, stats = await run_vector(
        tls_files, secret, rapid_reset_round, reason="reset_flood", code=ErrorCodes.ENHANCE_YOUR_CALM
    )
    assert max(a.rounds for a in attacks) < 1000
    report("rapid reset", attacks, good, streams_started=stats.streams_started)


async def test_an_empty_data_frame_flood_is_cut_off(tls_files, secret):
    """Empty DATA frames without END_STREAM on an open Connect stream (CVE-2019-9518)."""

    def rounds(client: RawH2Client):
        return lambda i: (connect_headers_frame(client) if i == 0 else b"") + raw_frame(0x0, stream_id=1) * 20

    attacks, good, _ = await run_vector(
        tls_files, secret, rounds, reason="empty_frames_flood", code=ErrorCodes.ENHANCE_YOUR_CALM
    )
    report("empty DATA frames", attacks, good)


async def test_a_window_update_flood_is_cut_off(tls_files, secret):
    attacks, good, _ = await run_vector(
        tls_files, secret, lambda _c: lambda i: raw_frame(0x8, (1).to_bytes(4, "big")) * 50,
        reason="window_update_flood", code=ErrorCodes.ENHANCE_YOUR_CALM,
    )
    report("WINDOW_UPDATE flood", attacks, good)


async def test_zero_length_header_names_are_a_protocol_error(tls_files, secret):
    """A Connect HEADERS frame carrying header fields with empty names (CVE-2019-9516): GOAWAY
    PROTOCOL_ERROR on the first one (h2 3.2 would raise IndexError out of its validation)."""
    import hpack

    def rounds(_client: RawH2Client):
        block = hpack.Encoder().encode([(":method", "POST"), (":path", "/x"), *[("", "")] * 100])
        return lambda i: raw_frame(0x1, block, flags=0x4, stream_id=1) if i == 0 else ping_frame(i)

    attacks, good, _ = await run_vector(
        tls_files, secret, rounds, reason="empty_header_name", code=ErrorCodes.PROTOCOL_ERROR
    )
    report("0-length header names", attacks, good)


# ----------------------------------------------------------------------------- unregistered streams

STREAMS_PER_CONNECTION = 50


async def test_unauthenticated_streams_never_hold_more_than_their_initial_window(tls_files, secret):
    """Connections of 50 Connect streams without a token, each sending a first message that declares 4 MiB
    and as much of it as the window allows: every stream is refused UNAUTHENTICATED on its HEADERS, the
    edge holds at most the 64 KiB initial window per stream (its budget's peak), and a good peer with a
    100,000-id catalog (a registration of about 3.7 MB) registers meanwhile."""
    settings = edge_settings(tls_files, secret)
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        stats = edge.stats
        good = GoodPeers(edge.port, tls_files.ca_pem, secret.metadata_for)
        refused: list[int] = []

        async def attack(stop: trio.Event) -> None:
            while not stop.is_set():
                client = await open_attacker(edge.port, tls_files.ca_pem)
                wire = b"".join(partial_message_round(client, 4 * 1024 * 1024, 60_000) for _ in range(STREAMS_PER_CONNECTION))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.run)
                    await client.send_bytes(wire)
                    with trio.fail_after(20):
                        await client.wait_until(lambda c=client: len(c.ended) >= STREAMS_PER_CONNECTION)
                    refused.append(sum(client.trailers(s).get("grpc-status") == "16" for s in client.ended))
                    nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(client.stream)

        catalog = tuple(f"{i:08d}-0000-4000-8000-000000000000" for i in range(100_000))
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            nursery.start_soon(attack, stop)
            with trio.fail_after(30):
                while not refused:
                    await trio.sleep(0.01)
            took = await good.register_one("good-large", catalog=catalog)
            await good.register_one("good-small")
            stop.set()
        assert good.failures == []
        assert refused and set(refused) == {STREAMS_PER_CONNECTION}
        # The good peer's 100,000-id registration (3.8 MB) and at most an initial window per attacking stream.
        assert stats.held_bytes_peak <= 4 * 1024 * 1024 + STREAMS_PER_CONNECTION * 65_535
        connected = edge.bridge.records(event_type="connected")
        assert any(r.key == "good-large" for r in connected)
    print(
        f"\nunauthenticated partial 4 MiB messages: {len(refused)} connections x {STREAMS_PER_CONNECTION} streams "
        f"refused UNAUTHENTICATED; held-bytes peak {stats.held_bytes_peak} B (budget {settings.peer_unregistered_buffer_bytes}); "
        f"100,000-id registration took {took * 1000:.0f} ms"
    )


async def push(client: RawH2Client, stream_id: int, total: int) -> None:
    """`total` bytes of DATA on `stream_id` as the edge's flow control lets them through (stops early
    if the stream ends)."""
    sent = 0
    while sent < total and stream_id not in client.ended and stream_id not in client.resets:
        window = min(client.h2.local_flow_control_window(stream_id), client.h2.max_outbound_frame_size, total - sent)
        if window <= 0:
            await client.wait_until(
                lambda: client.h2.local_flow_control_window(stream_id) > 0 or stream_id in client.ended
            )
            continue
        client.h2.send_data(stream_id, b"\0" * window)
        sent += window
        await client.flush()


async def test_without_authentication_the_unregistered_budget_bounds_what_streams_hold(tls_files, secret):
    """PEER_AUTH_MODE=none (nothing to prove on HEADERS, so windows open at once) and a 6 MiB budget:
    three streams each send 2.5 MiB of a first message declaring 4 MiB; the third, which would take the
    edge over its budget, is refused RESOURCE_EXHAUSTED; the edge never holds more than the budget; a
    good peer registers meanwhile."""
    settings = edge_settings(tls_files, secret, peer_auth_mode="none", peer_unregistered_buffer_bytes=6 * 1024 * 1024)
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        stats = edge.stats
        client = await open_attacker(edge.port, tls_files.ca_pem)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            streams = []
            for _ in range(3):
                stream_id = client.open_call(CONNECT_PATH)
                client.h2.send_data(stream_id, (4 * 1024 * 1024).to_bytes(5, "big"))
                await client.flush()
                streams.append(stream_id)
            with trio.fail_after(30):
                for stream_id in streams:
                    await push(client, stream_id, 5 * 512 * 1024)
                await client.wait_until(lambda: streams[2] in client.ended)
            good = GoodPeers(edge.port, tls_files.ca_pem, lambda _peer_id: ())
            took = await good.register_one("good-none")
            nursery.cancel_scope.cancel()
        assert client.trailers(streams[2])["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert stats.held_refused == 1 and stats.held_bytes_peak <= settings.peer_unregistered_buffer_bytes
        assert good.failures == []
    print(f"\nPEER_AUTH_MODE=none, 6 MiB budget: peak {stats.held_bytes_peak} B held; good peer registered in {took * 1000:.0f} ms")


async def test_a_large_registration_from_an_authenticated_peer_still_works(tls_files, secret):
    """A 100,000-id catalog with the default budget: admitted, and the held-bytes budget is back to 0."""
    async with running_edge(edge_settings(tls_files, secret), bridge=MemoryBridge()) as edge:
        good = GoodPeers(edge.port, tls_files.ca_pem, secret.metadata_for)
        catalog = tuple(f"{i:08d}-0000-4000-8000-000000000000" for i in range(100_000))
        took = await good.register_one("big", catalog=catalog)
        assert good.failures == []
        with trio.fail_after(10):
            await edge.stats.wait_until(lambda s: s.held_bytes == 0)
        assert edge.stats.held_bytes_peak >= 3_000_000
    print(f"\n100,000-id registration: {took * 1000:.0f} ms")
