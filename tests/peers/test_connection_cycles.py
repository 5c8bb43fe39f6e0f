"""A finished peer connection is freed by reference counting, not left to a full garbage collection
(docs/design.md#no-cycles-per-connection).

h2 keeps a table of its own bound methods, trio's SSLStream a bound method of itself, and a connection
and its stream tasks point at each other; the edge breaks those references when a connection is over.
Without that, every TLS peer that leaves stays in memory (its SSLObject, buffers, h2 state: ~50 KiB)
until the collector's oldest generation is next collected.

Rules: the real edge over real TLS sockets with grpcio peers; `gc.DEBUG_SAVEALL` shows what only the
cycle collector could free. No real-time sleeps for timing: the test waits on the edge's own counters.
"""

from __future__ import annotations

import collections
import gc
from collections.abc import Iterator

import pytest
import trio

from testing.grpcio_peer import GrpcioPeer
from testing.harness import MemoryBridge, running_edge
from testing.settings import tls_settings

PEERS = 20
#: Objects of a connection that must never be cyclic garbage.
CONNECTION_TYPES = {"ServerConnection", "GrpcServerProtocol", "H2Connection", "SSLStream", "SSLObject", "ServerStream", "Session"}


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """Everything the cycle collector finds while the test runs, kept in `gc.garbage` instead of freed."""
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


async def connect_register_leave(port: int, ca_pem: bytes, prefix: str, edge) -> None:
    peers = [GrpcioPeer(port, root_certificates=ca_pem) for _ in range(PEERS)]
    for index, peer in enumerate(peers):
        peer.register(f"{prefix}-{index}")
    for peer in peers:
        reply = await peer.receive_kind("registration_response", timeout=30)
        assert reply.registration_response.success
    for peer in peers:
        peer.close()
    stats = edge.runtime.grpc_stats
    with trio.fail_after(30):
        await stats.wait_until(lambda s: s.connections_open == 0)
        while edge.registry.lookup(f"{prefix}-{PEERS - 1}") is not None:
            await trio.sleep(0.01)


async def test_peers_that_leave_leave_no_cyclic_garbage(tls_files, saved_garbage):
    settings = tls_settings(tls_files)
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        await connect_register_leave(edge.port, tls_files.ca_pem, "warm", edge)
        gc.collect()
        saved_garbage.clear()  # first-use objects (caches, imports) aside
        await connect_register_leave(edge.port, tls_files.ca_pem, "leave", edge)
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in saved_garbage)
    leaked = {kind: count for kind, count in kinds.items() if kind in CONNECTION_TYPES}
    assert leaked == {}, f"connections freed only by the cycle collector: {leaked}"
