"""The edge-wide inbound budget (GRPC_INBOUND_BUFFER_BYTES, docs/security.md "Inbound bytes") against
registered peers that flood while their sessions cannot take anything (Kafka stalled): real TLS sockets,
the edge's own peer server, raw HTTP/2 flooders (`tests.peers.abuse_support`) and a good grpcio peer.

The claims: the bytes the edge holds for peers never go over the budget plus the documented slack; the
flooders get backpressure (their connections wait for room), never a reset; a good peer registers
during the flood; once Kafka takes records again every message is published, in order, none dropped.
"""

from __future__ import annotations

import h2.events
import trio

from edge.config import settings_for_tests
from edge.grpc.inbound_budget import READ_STEP
from edge.proto import CONNECT_PATH, pb
from tests.grpc.support import RawH2Client, grpc_frame
from tests.peers.abuse_support import GoodPeers, open_attacker
from testing.harness import MemoryBridge, running_edge

BUDGET = 256 * 1024
PEERS = 12
MESSAGES = 200  # per peer, about 1 KiB each: 200 KiB per peer, 2.4 MB in all, ~9 budgets' worth


def settings(tls_files):
    return settings_for_tests(
        grpc_use_tls=True,
        grpc_cert_path=tls_files.cert_path,
        grpc_key_path=tls_files.key_path,
        peer_auth_mode="none",
        peer_registration_rate_per_address=0.0,
        peer_message_rate=1_000_000.0,  # the flood is not what the message meter is for here
        peer_message_burst=1_000_000,
        grpc_max_message_bytes=64 * 1024,
        peer_unregistered_buffer_bytes=1024 * 1024,
        grpc_inbound_buffer_bytes=BUDGET,
        kafka_event_buffer_size=16,
    )


def message(peer_id: str, n: int) -> bytes:
    return pb.PeerMessage(
        request_id=f"{peer_id}-{n:05d}",
        file_hash_response=pb.FileHashResponse(catalog_uuid="c", hashes={"f": "h" * 1000}),
    ).SerializeToString()


async def registered_flooder(port: int, ca_pem: bytes, peer_id: str, nursery: trio.Nursery) -> tuple[RawH2Client, int]:
    client = await open_attacker(port, ca_pem)
    nursery.start_soon(client.run)
    stream_id = client.open_call(CONNECT_PATH)
    registration = pb.PeerMessage(request_id="reg", registration_request=pb.PeerRegistrationRequest(peer_name=peer_id))
    client.send_raw(stream_id, grpc_frame(registration.SerializeToString()))
    await client.flush()
    await client.wait_until(lambda: client.messages(stream_id))
    reply = pb.EdgeMessage.FromString(client.messages(stream_id)[0])
    assert reply.registration_response.success, reply.registration_response.error_message
    return client, stream_id


async def flood(client: RawH2Client, stream_id: int, peer_id: str, progress: dict[str, int]) -> None:
    """Every message, as the edge's flow control lets the bytes through."""
    wire = b"".join(grpc_frame(message(peer_id, n)) for n in range(MESSAGES))
    sent = 0
    while sent < len(wire):
        window = min(client.h2.local_flow_control_window(stream_id), client.h2.max_outbound_frame_size, len(wire) - sent)
        if window <= 0:
            await client.wait_until(lambda: client.h2.local_flow_control_window(stream_id) > 0)
            continue
        client.h2.send_data(stream_id, wire[sent : sent + window])
        sent += window
        progress[peer_id] = sent
        await client.flush()


def flood_ids(bridge: MemoryBridge, prefix: str = "flood-") -> list[str]:
    return [p.value["request_id"] for p in bridge.published if p.value.get("request_id", "").startswith(prefix)]


async def check_everything_arrives(bridge: MemoryBridge, flooders: dict[str, tuple[RawH2Client, int]]) -> None:
    """Every message of every flooder is published, in order per peer; no stream was reset or ended."""
    with trio.fail_after(60):
        await bridge.wait_for(lambda: len(flood_ids(bridge)) >= PEERS * MESSAGES, timeout=None)
    for peer_id, (client, stream_id) in flooders.items():
        assert flood_ids(bridge, peer_id + "-") == [f"{peer_id}-{n:05d}" for n in range(MESSAGES)]
        assert stream_id not in client.resets and stream_id not in client.ended
        assert not any(isinstance(e, h2.events.StreamReset) for e in client.events)


def check_bound(stats) -> None:
    """docs/security.md, "Inbound bytes": the budget, plus one read per connection that was reading when
    it filled (over TLS one record, 16 KiB), plus the rest of the message each stream was receiving."""
    assert stats.inbound_peak <= BUDGET + (PEERS + 1) * (READ_STEP + 2 * 1024)


async def registered_flooders(port: int, ca_pem: bytes, nursery: trio.Nursery) -> dict[str, tuple[RawH2Client, int]]:
    """PEERS registered peers, by peer id: each its (client, stream id), ready to flood."""
    flooders = {}
    for i in range(PEERS):
        peer_id = f"flood-{i:02d}"
        flooders[peer_id] = await registered_flooder(port, ca_pem, peer_id, nursery)
    return flooders


async def test_a_stalled_kafka_fills_the_budget_then_peers_wait_and_lose_nothing(tls_files):
    """Kafka takes nothing: sessions stop taking messages, the budget fills and stays within its bound
    while the flooders are held back; when Kafka is back every message is published, in order."""
    bridge = MemoryBridge()
    async with running_edge(settings(tls_files), bridge=bridge) as edge:
        stats = edge.stats
        progress: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            flooders = await registered_flooders(edge.port, tls_files.ca_pem, nursery)
            bridge.stall()
            for peer_id, (client, stream_id) in flooders.items():
                nursery.start_soon(flood, client, stream_id, peer_id, progress)
            with trio.fail_after(30):  # the budget fills and every flooder's connection waits for room
                await stats.wait_until(lambda s: s.inbound_buffered_bytes >= BUDGET and s.inbound_waiting == PEERS)
            held_while_stalled = stats.inbound_buffered_bytes
            assert sum(progress.values()) < PEERS * MESSAGES * 1000 // 2  # held back: most is still to send
            check_bound(stats)
            bridge.resume()
            await check_everything_arrives(bridge, flooders)
            nursery.cancel_scope.cancel()
        check_bound(stats)
    print(
        f"\n{PEERS} peers flooding a stalled Kafka, budget {BUDGET} B: peak held {stats.inbound_peak} B "
        f"({(stats.inbound_peak - BUDGET) / PEERS:+.0f} B per connection over), {held_while_stalled} B held while "
        f"stalled, {stats.inbound_pauses} pauses"
    )


async def test_a_good_peer_registers_while_registered_peers_flood_a_slow_kafka(tls_files):
    """Kafka takes one record per 2 ms, far slower than the flood: the budget is full, flooders wait their
    turn, and a new peer (whose connection holds nothing) registers meanwhile; every message arrives."""
    bridge = MemoryBridge()
    async with running_edge(settings(tls_files), bridge=bridge) as edge:
        stats = edge.stats
        progress: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            flooders = await registered_flooders(edge.port, tls_files.ca_pem, nursery)
            bridge.pace = 0.002
            for peer_id, (client, stream_id) in flooders.items():
                nursery.start_soon(flood, client, stream_id, peer_id, progress)
            with trio.fail_after(30):
                await stats.wait_until(lambda s: s.inbound_buffered_bytes >= BUDGET and s.inbound_pauses >= PEERS)
            good = GoodPeers(edge.port, tls_files.ca_pem, lambda _peer_id: ())
            took = await good.register_one("good-during-flood")
            assert good.failures == []
            assert len(flood_ids(bridge)) < PEERS * MESSAGES  # still flooding when it registered
            bridge.pace = None
            await check_everything_arrives(bridge, flooders)
            nursery.cancel_scope.cancel()
        check_bound(stats)
    print(
        f"\n{PEERS} peers flooding a slow Kafka, budget {BUDGET} B: peak held {stats.inbound_peak} B, "
        f"{stats.inbound_pauses} pauses; a good peer registered in {took * 1000:.0f} ms during the flood"
    )
