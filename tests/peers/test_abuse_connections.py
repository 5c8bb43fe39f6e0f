"""Connection-level abuse of the peer port on real TLS sockets: each attack gets its documented refusal,
the edge's own accounting stays within its bounds, and a good peer registers during the attack
(docs/security.md, "Transport threat model"). Timed limits run under MockClock over TLS on memory
streams; floods use real loopback sockets, several source addresses (127.0.0.x), and no sleeps."""

from __future__ import annotations

import errno
import resource
import ssl

import grpc
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from edge.grpc import GrpcServerConfig, GrpcServerStats, serve_grpc_connection
from edge.grpc.connection_limits import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS
from edge.grpc.listeners import ACCEPT_BACKOFF_FIRST, ACCEPT_BACKOFF_MAX
from edge.grpc.refusals import ACCEPT_FAILED, IDLE_TIMEOUT, RefusalTally, serve_refusal_summaries
from edge.ops import memory
from edge.ops.fd_limit import raise_open_files_limit
from edge.proto import CONNECT_PATH
from testing.grpcio_peer import GrpcioPeer
from testing.harness import MemoryBridge, running_edge, server_metrics
from testing.relay import Relay
from testing.settings import tls_settings
from tests.grpc.support import RawH2Client
from tests.peers.test_limits import edge_admission


def client_context(tls_files) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=tls_files.ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    return context


async def h2_over_tls(port: int, source: str, tls_files) -> RawH2Client:
    """A raw HTTP/2 client over TLS from `source` (a loopback address), preface sent."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    stream = trio.SSLStream(tcp, client_context(tls_files), server_hostname="localhost")
    await stream.do_handshake()
    client = RawH2Client(stream)
    await client.start()
    return client


async def connect_or_none(port: int, source: str) -> trio.SocketStream | None:
    """A TCP connection from `source`, or None if the edge reset it before trio saw it complete."""
    try:
        return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    except OSError:
        return None


async def refused_at_once(port: int, source: str) -> bool:
    """Connect from `source`; True if the edge closes the connection before any byte is exchanged."""
    stream = await connect_or_none(port, source)
    if stream is None:
        return True
    try:
        with trio.fail_after(10):
            return await stream.receive_some(1) == b""
    except trio.BrokenResourceError:  # reset (SO_LINGER 0)
        return True
    finally:
        stream.socket.close()


async def register_through_relay(edge_port: int, source: str, tls_files, peer_id: str) -> bool:
    async with trio.open_nursery() as nursery:
        relay_port = await nursery.start(Relay("127.0.0.1", edge_port, source_host=source).serve)
        peer = GrpcioPeer(relay_port, root_certificates=tls_files.ca_pem, own_connection=True)
        try:
            peer.register(peer_id)
            reply = await peer.receive_kind("registration_response")
            return reply.registration_response.success
        finally:
            peer.close()
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- connections per address


async def test_connections_over_the_per_address_limit_are_reset_and_others_register(tls_files):
    """GRPC_MAX_CONNECTIONS_PER_ADDRESS=20: 60 connections from 127.0.0.1 stuck before TLS hold 20 places;
    the other 40 are reset as they are accepted (`max_connections_per_address`); a peer from 127.0.0.2
    registers meanwhile."""
    settings = tls_settings(tls_files, grpc_max_connections_per_address=20)
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        stats = edge.runtime.grpc_stats
        held = []
        for _ in range(60):
            held.append(await connect_or_none(edge.port, "127.0.0.1"))
        await stats.wait_until(lambda s: s.refusals.totals[MAX_CONNECTIONS_PER_ADDRESS] == 40)
        assert stats.connections_open == 20
        assert await refused_at_once(edge.port, "127.0.0.1")
        assert await register_through_relay(edge.port, "127.0.0.2", tls_files, "peer-good")
        assert stats.connections_open <= 20 + 1
        for stream in held:
            if stream is not None:
                stream.socket.close()


async def test_connections_over_the_total_limit_are_reset(tls_files):
    """GRPC_MAX_CONNECTIONS=30: 30 connections stuck before TLS from 10 addresses fill the edge; the next
    one, from anywhere, is reset at accept (`max_connections`); once one goes, a peer registers."""
    settings = tls_settings(tls_files, grpc_max_connections=30)
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        stats = edge.runtime.grpc_stats
        held = []
        for index in range(30):
            held.append(await trio.open_tcp_stream("127.0.0.1", edge.port, local_address=f"127.0.0.{index % 10 + 1}"))
        await stats.wait_until(lambda s: s.connections_open == 30)
        assert await refused_at_once(edge.port, "127.0.0.20")
        assert stats.refusals.totals[MAX_CONNECTIONS] == 1 and stats.connections_open == 30
        held.pop().socket.close()
        await stats.wait_until(lambda s: s.connections_open == 29)
        assert await register_through_relay(edge.port, "127.0.0.21", tls_files, "peer-good")
        for stream in held:
            if stream is not None:
                stream.socket.close()


# ---------------------------------------------------------------------------------------- idle timeout


async def test_a_connection_without_streams_gets_goaway_at_the_idle_timeout(autojump_clock, tls_files):
    """TLS over memory streams, MockClock: a client that finishes TLS and the preface but opens no stream
    gets GOAWAY (NO_ERROR) and EOF at exactly `idle_timeout`; a connection with an open stream is kept
    past it, and its idle time counts from its last stream's end."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls_files.cert_path, tls_files.key_path)
    server_context.set_alpn_protocols(["h2"])
    config = GrpcServerConfig(host="test", port=0, ssl_context=None, idle_timeout=30.0)
    stats = GrpcServerStats()

    async def handler(stream):
        await stream.receive_message()  # until the client ends its side

    async def connect(nursery: trio.Nursery) -> RawH2Client:
        server_end, client_end = trio.testing.memory_stream_pair()
        server = trio.SSLStream(server_end, server_context, server_side=True)
        nursery.start_soon(lambda: serve_grpc_connection(server, {CONNECT_PATH: handler}, config, metrics=server_metrics(), stats=stats))
        client_tls = trio.SSLStream(client_end, client_context(tls_files), server_hostname="localhost")
        await client_tls.do_handshake()
        client = RawH2Client(client_tls)
        await client.start()
        nursery.start_soon(client.run)
        return client

    async with trio.open_nursery() as nursery:
        began = trio.current_time()
        idle = await connect(nursery)
        busy = await connect(nursery)
        stream_id = busy.open_call(CONNECT_PATH)
        await busy.flush()
        await idle.wait_closed()
        assert trio.current_time() - began == pytest.approx(30.0)
        goaways = [e for e in idle.events if type(e).__name__ == "ConnectionTerminated"]
        assert [int(e.error_code) for e in goaways] == [0]
        assert stats.refusals.totals[IDLE_TIMEOUT] == 1 and not busy.closed
        await trio.sleep(100)
        assert not busy.closed and stats.connections_open == 1
        busy.h2.end_stream(stream_id)
        await busy.flush()
        ended = trio.current_time()
        await busy.wait_closed()
        assert trio.current_time() - ended == pytest.approx(30.0)
        assert stats.refusals.totals[IDLE_TIMEOUT] == 2
        await stats.wait_until(lambda s: s.connections_open == 0)


# ------------------------------------------------------------------------------------ accept backoff


async def test_accept_failing_for_lack_of_descriptors_backs_off(autojump_clock, tls_files, monkeypatch):
    """accept() failing with EMFILE 12 times in a row: the loop waits ACCEPT_BACKOFF_FIRST, doubling up to
    ACCEPT_BACKOFF_MAX, between tries (no spinning); each failure is counted (`accept_failed`) and none is
    logged on its own; then the waiting client is served."""
    calls: list[float] = []
    original = trio.SocketListener.accept

    async def failing_accept(self):
        calls.append(trio.current_time())
        if len(calls) <= 12:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, "Too many open files")
        return await original(self)

    monkeypatch.setattr(trio.SocketListener, "accept", failing_accept)
    settings = tls_settings(tls_files, health_http_address=None)  # the peer port's accept loop only
    with capture_logs() as logs:
        async with running_edge(settings, bridge=MemoryBridge()) as edge:
            stats = edge.runtime.grpc_stats
            client = await trio.open_tcp_stream("127.0.0.1", edge.port)
            await stats.wait_until(lambda s: s.connections_accepted == 1)
            await client.aclose()
    gaps = [round(b - a, 6) for a, b in zip(calls[:12], calls[1:13], strict=True)]
    expected = [min(ACCEPT_BACKOFF_FIRST * 2**n, ACCEPT_BACKOFF_MAX) for n in range(12)]
    assert gaps == pytest.approx(expected)
    assert stats.refusals.totals[ACCEPT_FAILED] == 12
    assert not [entry for entry in logs if "accept" in entry["event"]]


# ------------------------------------------------------------------------ refusal summaries, fd limit


async def test_refusals_are_logged_as_one_summary_line_per_interval(autojump_clock):
    """10,000 refusals in one interval make one `refusals_summary` line with the counts by cause; a quiet
    interval makes none; what is left is logged when the task is cancelled."""
    tally = RefusalTally()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_refusal_summaries, tally, 10.0)
            for _ in range(9_000):
                tally.count(MAX_CONNECTIONS_PER_ADDRESS)
            tally.count(IDLE_TIMEOUT, 1_000)
            await trio.sleep(25)  # two intervals: the first with refusals, the second quiet
            tally.count(MAX_CONNECTIONS)
            nursery.cancel_scope.cancel()
    summaries = [entry for entry in logs if entry["event"] == "refusals_summary"]
    assert [s["by_cause"] for s in summaries] == [
        {IDLE_TIMEOUT: 1_000, MAX_CONNECTIONS_PER_ADDRESS: 9_000},
        {MAX_CONNECTIONS: 1},
    ]
    assert len(logs) == 2 and tally.totals[MAX_CONNECTIONS_PER_ADDRESS] == 9_000


def test_the_open_files_limit_is_raised_to_the_hard_limit_and_logged():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
        with capture_logs() as logs:
            before, after = raise_open_files_limit(max_connections=10)
        assert before == min(soft, 1024) and after == (hard if hard != resource.RLIM_INFINITY else after)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after
        [line] = [entry for entry in logs if entry["event"] == "open_files_limit"]
        assert (line["before"], line["after"]) == (before, after)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------- unregistered streams


async def test_addresses_holding_streams_that_never_register_cannot_lock_new_peers_out(tls_files, monkeypatch):
    """25 addresses x 60 streams that never send their registration (1,500 for MAX_UNREGISTERED_STREAMS
    1,000): no address holds more than its share once shares shrink, the cap is never exceeded, and a
    peer from a 26th address registers at once (it displaces the oldest stream of the address holding
    most, which ends with RESOURCE_EXHAUSTED)."""
    settings = tls_settings(
        tls_files, peer_registration_rate_per_address=0, peer_handshake_timeout_sec=300.0, grpc_max_concurrent_streams=100
    )
    admissions = edge_admission(monkeypatch)
    async with running_edge(settings, bridge=MemoryBridge()) as edge, trio.open_nursery() as nursery:
        [admission] = admissions
        attackers = []
        for index in range(25):
            client = await h2_over_tls(edge.port, f"127.0.0.{index + 2}", tls_files)
            nursery.start_soon(client.run)
            for _ in range(60):
                client.open_call(CONNECT_PATH)
            await client.flush()
            attackers.append(client)
        unregistered = admission.unregistered
        await edge.bridge.wait_for(lambda: edge.stats.streams_started >= 1500, poll=0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert unregistered.count <= settings.max_unregistered_streams
        assert await register_through_relay(edge.port, "127.0.0.100", tls_files, "peer-good")
        assert unregistered.count <= settings.max_unregistered_streams
        refused = sum(1 for client in attackers for headers in client.headers.values() for block in headers
                      if block.get("grpc-status") == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]))
        assert refused >= 1500 - settings.max_unregistered_streams
        nursery.cancel_scope.cancel()


async def test_the_c_heap_is_trimmed_once_per_interval(autojump_clock, monkeypatch):
    """After a flood, freed C memory goes back to the system: `malloc_trim` once per TRIM_INTERVAL."""
    trims: list[float] = []
    monkeypatch.setattr(memory, "malloc_trim", lambda: lambda: trims.append(trio.current_time()) or 1)
    with trio.move_on_after(3.5 * memory.TRIM_INTERVAL):
        await memory.serve_memory_trim()
    assert trims == [memory.TRIM_INTERVAL * n for n in (1, 2, 3)]
