"""docs/design.md#purerpc-no-graceful-shutdown: graceful shutdown, and one listener per port.

Rules: real sockets and TLS, real grpcio clients in worker threads; no real-time sleeps.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Any

import grpc
import h2.events
import pytest
import trio

from edge.grpc import GrpcServerConfig, ServerStream, Status, serve_grpc
from testing.grpcio_peer import OWN_CONNECTION
from testing.harness import running_server, server_metrics
from testing.tls import TlsFiles

from .support import RawH2Client, bytes_stream_method, grpc_frame, own_tcp_sockets

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"


async def _hold_open(stream: ServerStream) -> Status | None:
    await stream.send_message(b"started")
    while await stream.receive_message() is not None:
        pass
    return None


def _open_call_until_status(target: str, ca_pem: bytes, started: threading.Event, release: threading.Event) -> Any:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(target, credentials, options=[OWN_CONNECTION]) as channel:

        def requests() -> Any:
            yield b"hello"
            release.wait()

        responses = bytes_stream_method(channel, PATH)(requests())
        assert next(responses) == b"started"
        started.set()
        try:
            next(responses)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        finally:
            release.set()
        return None


async def test_shutdown_sends_unavailable_then_goaway_and_frees_the_port(server_tls: Any, tls_files: TlsFiles) -> None:
    """Cancelling serve_grpc: open calls end with UNAVAILABLE "edge shutting down" (TLS, grpcio), the
    whole shutdown stays within shutdown_grace, no socket is left, and the port can be bound again at once."""
    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=server_tls, shutdown_grace=5.0)
    started = [threading.Event() for _ in range(3)]
    release = threading.Event()
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        async with running_server(config, {PATH: _hold_open}) as server:
            for event in started:
                nursery.start_soon(_run_in_thread, results, server.target, tls_files.ca_pem, event, release)
            with trio.fail_after(20):
                for event in started:
                    await trio.to_thread.run_sync(event.wait)
                await server.stats.wait_until(lambda s: s.streams_open == 3)
            t0 = trio.current_time()
            await server.stop()
            shutdown_took = trio.current_time() - t0
    assert shutdown_took < config.shutdown_grace
    assert results == [(grpc.StatusCode.UNAVAILABLE, "edge shutting down")] * 3
    assert server.stats.statuses["UNAVAILABLE"] == 3
    sockets = own_tcp_sockets(server.port)
    assert sockets["listen"] == [] and sockets["server"] == []
    # The port is free for a fresh listener right away (SO_REUSEADDR, nothing still bound).
    listeners = await trio.open_tcp_listeners(server.port, host="127.0.0.1")
    for listener in listeners:
        await listener.aclose()
    print(f"\nshutdown with 3 open TLS calls took {shutdown_took * 1000:.1f} ms")


async def _run_in_thread(results: list[Any], target: str, ca_pem: bytes, started: threading.Event, release: threading.Event) -> None:
    results.append(await trio.to_thread.run_sync(_open_call_until_status, target, ca_pem, started, release))


async def test_shutdown_sends_goaway_after_the_final_status() -> None:
    """On the wire: the open stream gets its trailers (grpc-status 14), then GOAWAY(NO_ERROR), then EOF;
    the server closes its socket once the client closed its side."""
    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None)
    async with running_server(config, {PATH: _hold_open}) as server:
        client = RawH2Client(await trio.open_tcp_stream("127.0.0.1", server.port))
        await client.start()
        stream_id = client.open_call(PATH)
        client.send_raw(stream_id, grpc_frame(b"x"))
        await client.flush()
        with trio.fail_after(10):
            while not client.messages(stream_id):
                assert await client.pump()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run)
                await server.stop()
    kinds = [type(e) for e in client.events]
    assert h2.events.TrailersReceived in kinds and h2.events.ConnectionTerminated in kinds
    assert kinds.index(h2.events.TrailersReceived) < kinds.index(h2.events.ConnectionTerminated)
    trailers = client.trailers(stream_id)
    assert trailers["grpc-status"] == "14"
    assert trailers["grpc-message"] == "edge shutting down"
    goaway = next(e for e in client.events if isinstance(e, h2.events.ConnectionTerminated))
    assert goaway.error_code == 0 and goaway.last_stream_id == stream_id
    assert client.closed


async def test_shutdown_of_an_idle_server_is_immediate() -> None:
    """No connections: cancel returns at once and the listening socket is gone."""
    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None)
    async with running_server(config, {}) as server:
        assert len(own_tcp_sockets(server.port)["listen"]) == 1
        started = time.perf_counter()
        await server.stop()
        assert time.perf_counter() - started < 0.5
    assert own_tcp_sockets(server.port)["listen"] == []


async def test_second_bind_on_the_same_port_fails_clearly() -> None:
    """No SO_REUSEPORT: a second server on a bound port fails with EADDRINUSE naming the address."""
    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None)
    async with running_server(config, {}) as server:
        second = GrpcServerConfig(host="127.0.0.1", port=server.port, ssl_context=None)
        with pytest.raises(OSError) as info:
            await serve_grpc(second, {}, metrics=server_metrics())
        assert info.value.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{server.port}" in str(info.value)
        assert len(own_tcp_sockets(server.port)["listen"]) == 1
