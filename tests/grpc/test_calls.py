"""Real sockets with real grpcio clients: statuses, sizes, compression, handler failures, pings, peer
address and TLS client certificates (docs/design.md#purerpc-error-text-leaked, #purerpc-unbounded-sizes,
#purerpc-compression-fatal, #purerpc-no-keepalive, #purerpc-handler-blind).

Rules: real sockets, real TLS from trustme fixtures, grpcio clients in worker threads (sync API) or on
their own asyncio loop (grpc.aio); no real-time sleeps; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any

import grpc
import h2.events
import pytest
import structlog
import trio

from edge.grpc import (
    GrpcServerConfig,
    MessageTooLarge,
    ServerStream,
    Status,
    StatusCode,
    StreamReset,
)
from testing.grpcio_peer import OWN_CONNECTION
from testing.harness import running_server
from testing.tls import TlsFiles

from .support import RawH2Client, bytes_stream_method, grpc_frame

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"
MiB = 1024 * 1024


async def echo(stream: ServerStream) -> Status | None:
    while (message := await stream.receive_message()) is not None:
        await stream.send_message(message)
    return None


def plain_config(**overrides: Any) -> GrpcServerConfig:
    return GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=None, **overrides)


def call_status(target: str, path: str, requests: list[bytes], **call_kwargs: Any) -> tuple[Any, str, list[bytes]]:
    """One stream-stream call from a sync grpcio channel: (code, details, responses)."""
    with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
        responses: list[bytes] = []
        try:
            for response in bytes_stream_method(channel, path)(iter(requests), **call_kwargs):
                responses.append(response)
        except grpc.RpcError as exc:
            return exc.code(), exc.details(), responses
        return grpc.StatusCode.OK, "", responses


class QueuedRequests:
    """A request iterator fed from the test (None ends it); counts how many messages grpcio pulled."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue()
        self.pulled = 0

    def __iter__(self) -> Any:
        while (item := self.queue.get()) is not None:
            self.pulled += 1
            yield item


# ---------------------------------------------------------------------------------------- statuses


async def test_handler_exception_becomes_internal_without_its_text() -> None:
    """docs/design.md#purerpc-error-text-leaked: a handler's exception reaches the client as INTERNAL
    "internal error" (never its text or repr), is logged server-side with its traceback, and a concurrent call
    on the same connection is unaffected (a bug in one stream never kills others)."""

    async def broken(stream: ServerStream) -> None:
        await stream.receive_message()
        async with trio.open_nursery() as nursery:  # handlers may open nurseries: the group is unwrapped
            nursery.start_soon(_raise_secret)

    def scenario(target: str) -> Any:
        with grpc.insecure_channel(target) as channel:
            requests = QueuedRequests()
            survivor = bytes_stream_method(channel, "/svc/Echo")(iter(requests))
            requests.queue.put(b"before")
            assert next(survivor) == b"before"
            try:
                list(bytes_stream_method(channel, "/svc/Broken")(iter([b"go"])))
            except grpc.RpcError as exc:
                outcome = (exc.code(), exc.details())
            requests.queue.put(b"after")
            assert next(survivor) == b"after"
            requests.queue.put(None)
            assert list(survivor) == []
            return outcome

    with structlog.testing.capture_logs() as logs:
        async with running_server(plain_config(), {"/svc/Broken": broken, "/svc/Echo": echo}) as server:
            code, details = await trio.to_thread.run_sync(scenario, server.target)
    assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error")
    failures = [entry for entry in logs if entry["event"] == "grpc_handler_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"
    assert isinstance(failures[0]["exc_info"], BaseException)
    assert "secret" in repr(failures[0]["exc_info"])
    assert failures[0]["stream_id"] and failures[0]["remote_address"].startswith("127.0.0.1:")
    assert server.stats.handler_errors == 1


async def _raise_secret() -> None:
    raise KeyError("secret database password")


async def test_returned_status_reaches_the_client() -> None:
    """A handler's Status (code and message, percent-encoded on the wire) is what the client gets."""

    async def deny(stream: ServerStream) -> Status:
        await stream.receive_message()
        return Status(StatusCode.PERMISSION_DENIED, "peer 7 is not allowed: 100% sure, ünïcödé")

    async with running_server(plain_config(), {PATH: deny}) as server:
        code, details, _ = await trio.to_thread.run_sync(call_status, server.target, PATH, [b"x"])
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "peer 7 is not allowed: 100% sure, ünïcödé"


async def test_unknown_path_is_unimplemented() -> None:
    async with running_server(plain_config(), {PATH: echo}) as server:
        code, details, _ = await trio.to_thread.run_sync(call_status, server.target, "/no.Such/Method", [b"x"])
    assert (code, details) == (grpc.StatusCode.UNIMPLEMENTED, "unknown method")


async def test_metadata_and_path_reach_the_handler() -> None:
    seen: dict[str, Any] = {}

    async def record(stream: ServerStream) -> None:
        seen.update(path=stream.path, metadata=dict(stream.metadata), address=stream.remote_address)
        await stream.receive_message()

    async with running_server(plain_config(), {PATH: record}) as server:
        await trio.to_thread.run_sync(
            lambda: call_status(server.target, PATH, [b"x"], metadata=[("x-peer-id", "peer-7")])
        )
    assert seen["path"] == PATH
    assert seen["metadata"]["x-peer-id"] == "peer-7"
    assert seen["address"][0] == "127.0.0.1" and seen["address"][1] > 0
    assert "user-agent" not in seen["metadata"] and not any(k.startswith(":") for k in seen["metadata"])


# ------------------------------------------------------------------------------------------- sizes


async def test_oversized_message_fails_only_its_stream() -> None:
    """docs/design.md#purerpc-unbounded-sizes: a 5 MiB message to a 4 MiB server ends that call with
    RESOURCE_EXHAUSTED; another call on the same connection keeps working (purerpc killed the whole
    connection)."""

    def scenario(target: str) -> Any:
        with grpc.insecure_channel(target) as channel:
            requests = QueuedRequests()
            survivor = bytes_stream_method(channel, PATH)(iter(requests))
            requests.queue.put(b"one")
            assert next(survivor) == b"one"
            try:
                list(bytes_stream_method(channel, PATH)(iter([b"x" * (5 * MiB)])))
            except grpc.RpcError as exc:
                outcome = (exc.code(), exc.details())
            requests.queue.put(b"two")
            assert next(survivor) == b"two"
            requests.queue.put(None)
            list(survivor)
            return outcome

    async with running_server(plain_config(), {PATH: echo}) as server:
        code, details = await trio.to_thread.run_sync(scenario, server.target)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == f"received message of {5 * MiB} bytes exceeds the limit of {4 * MiB} bytes"
    # The body was never buffered: the prefix alone decided it.
    assert server.stats.max_stream_buffered_bytes < MiB


async def test_a_max_size_message_passes_a_small_window() -> None:
    """Exactly max_message_bytes passes in both directions through 64 KiB windows."""
    config = plain_config(max_message_bytes=4 * MiB, stream_window_bytes=64 * 1024)
    body = bytes(range(256)) * (4 * MiB // 256)

    def scenario(target: str) -> Any:
        options = [OWN_CONNECTION, ("grpc.max_receive_message_length", 8 * MiB)]
        with grpc.insecure_channel(target, options=options) as channel:
            return list(bytes_stream_method(channel, PATH)(iter([body])))

    async with running_server(config, {PATH: echo}) as server:
        assert await trio.to_thread.run_sync(scenario, server.target) == [body]


async def test_outbound_message_over_the_limit_is_refused() -> None:
    """send_message refuses a message over max_message_bytes with MessageTooLarge (nothing is sent); left
    unhandled, the call ends with RESOURCE_EXHAUSTED."""
    raised: list[MessageTooLarge] = []

    async def too_big(stream: ServerStream) -> None:
        await stream.receive_message()
        try:
            await stream.send_message(b"y" * (MiB + 1))
        except MessageTooLarge as exc:
            raised.append(exc)
            raise

    async with running_server(plain_config(max_message_bytes=MiB), {PATH: too_big}) as server:
        code, _, responses = await trio.to_thread.run_sync(call_status, server.target, PATH, [b"x"])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and responses == []
    assert raised[0].size == MiB + 1 and raised[0].direction == "sent"


async def test_slow_reader_is_held_back_by_flow_control_not_memory() -> None:
    """docs/design.md#purerpc-unbounded-sizes: a handler that does not read makes its client stop (receive
    window 0) once its queue is full; the stream never holds more than queue*max + max + window bytes,
    measured through the stats; when the handler reads again every message arrives in order."""
    queue_size, max_message, window = 4, 256 * 1024, 64 * 1024
    config = plain_config(stream_inbound_queue=queue_size, max_message_bytes=max_message, stream_window_bytes=window)
    bound = queue_size * max_message + max_message + window
    holder: dict[str, ServerStream] = {}
    release = trio.Event()
    count = 60  # 15 MiB offered

    async def slow(stream: ServerStream) -> None:
        holder["stream"] = stream
        await release.wait()
        for i in range(count):
            message = await stream.receive_message()
            assert message == bytes([i]) * max_message
        assert await stream.receive_message() is None

    requests = QueuedRequests()
    for i in range(count):
        requests.queue.put(bytes([i]) * max_message)
    requests.queue.put(None)

    async with running_server(config, {PATH: slow}) as server:
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def client() -> None:
                result.append(await trio.to_thread.run_sync(_stream_requests, server.target, requests))

            nursery.start_soon(client)
            with trio.fail_after(20):
                await server.stats.wait_until(
                    lambda s: "stream" in holder and holder["stream"].receive_window == 0
                    and s.inbound_buffered_bytes >= queue_size * max_message
                )
            held = server.stats.inbound_buffered_bytes
            pulled_while_blocked = requests.pulled
            assert held <= bound
            assert pulled_while_blocked < count
            release.set()
        assert result == [grpc.StatusCode.OK]
    assert server.stats.max_stream_buffered_bytes <= bound
    print(
        f"\nslow reader: held {held} bytes (bound {bound}), peak {server.stats.max_stream_buffered_bytes}; "
        f"client had handed over {pulled_while_blocked}/{count} messages of {max_message} bytes"
    )


def _stream_requests(target: str, requests: QueuedRequests) -> Any:
    with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
        try:
            list(bytes_stream_method(channel, PATH)(iter(requests)))
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def test_max_concurrent_streams_is_advertised_and_respected() -> None:
    """With max_concurrent_streams=3, grpcio never has more than 3 calls open on the connection; the
    others wait their turn and all complete."""
    open_now = 0
    peak = 0
    release = trio.Event()

    async def hold(stream: ServerStream) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            await stream.receive_message()
            await release.wait()
            await stream.send_message(b"done")
        finally:
            open_now -= 1

    async def six_calls(target: str) -> list[Any]:
        async with grpc.aio.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
            method = bytes_stream_method(channel, PATH)

            async def one() -> Any:
                call = method(iter([b"x"]))
                return [r async for r in call], await call.code()

            return await asyncio.gather(*(one() for _ in range(6)))

    async with running_server(plain_config(max_concurrent_streams=3), {PATH: hold}) as server:
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def run() -> None:
                results.extend(await trio.to_thread.run_sync(asyncio.run, six_calls(server.target)))

            nursery.start_soon(run)
            with trio.fail_after(20):
                await server.stats.wait_until(lambda s: s.streams_open == 3)
            assert server.stats.streams_started == 3
            release.set()
    assert results == [([b"done"], grpc.StatusCode.OK)] * 6
    assert peak == 3


# ------------------------------------------------------------------------------------- compression


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_compressed_messages_from_grpcio(compression: Any) -> None:
    """docs/design.md#purerpc-compression-fatal: grpcio's gzip/deflate messages are decompressed (purerpc
    killed the connection), and a compressed message that inflates past the limit ends only its own call."""
    encodings: list[str | None] = []

    async def echo_recording(stream: ServerStream) -> Status | None:
        encodings.append(stream.message_encoding)
        return await echo(stream)

    def scenario(target: str) -> Any:
        with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
            method = bytes_stream_method(channel, PATH)
            body = b"giggityflix " * 50_000
            assert list(method(iter([body, b"second"]), compression=compression)) == [body, b"second"]
            try:
                list(method(iter([b"\0" * (6 * MiB)]), compression=compression))
            except grpc.RpcError as exc:
                bomb = (exc.code(), exc.details())
            assert list(method(iter([b"after"]), compression=compression)) == [b"after"]
            return bomb

    async with running_server(plain_config(), {PATH: echo_recording}) as server:
        code, details = await trio.to_thread.run_sync(scenario, server.target)
        assert server.stats.connections_accepted == 1  # the same connection throughout
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == f"decompressed message of {4 * MiB + 1} bytes exceeds the limit of {4 * MiB} bytes"
    assert set(encodings) == {"gzip" if compression == grpc.Compression.Gzip else "deflate"}
    assert server.stats.max_stream_buffered_bytes < 2 * MiB + 100  # first call's body, never the bomb's


async def test_accepted_encodings_are_advertised() -> None:
    """Response headers say honestly what we decompress: grpc-accept-encoding identity,deflate,gzip."""
    async with running_server(plain_config(), {PATH: echo}) as server:
        client = RawH2Client(await trio.open_tcp_stream("127.0.0.1", server.port))
        async with client.stream:
            await client.start()
            stream_id = client.open_call(PATH)
            client.send_raw(stream_id, grpc_frame(b"x"), end=True)
            await client.flush()
            with trio.fail_after(10):
                while stream_id not in client.ended:
                    assert await client.pump()
    assert client.headers[stream_id][0]["grpc-accept-encoding"] == "identity,deflate,gzip"


# -------------------------------------------------------------------------------- pings and resets


async def test_client_pings_are_answered() -> None:
    """docs/design.md#purerpc-no-keepalive: HTTP/2 PINGs are acknowledged promptly, also while a call is
    open."""
    async with running_server(plain_config(), {PATH: echo}) as server:
        client = RawH2Client(await trio.open_tcp_stream("127.0.0.1", server.port))
        async with client.stream:
            await client.start()
            client.open_call(PATH)
            for n in range(3):
                client.h2.ping(b"ping-%03d" % n)
            await client.flush()
            with trio.fail_after(10):
                while len([e for e in client.events if isinstance(e, h2.events.PingAckReceived)]) < 3:
                    assert await client.pump()
    acks = [e.ping_data for e in client.events if isinstance(e, h2.events.PingAckReceived)]
    assert acks == [b"ping-000", b"ping-001", b"ping-002"]


async def test_rst_stream_reaches_the_handler_at_once() -> None:
    """RST_STREAM(CANCEL) on the wire: the handler blocked in receive_message raises StreamReset within
    one read of the socket, and the stream's counters say so."""
    seen = trio.Event()
    latency: list[float] = []
    sent_at: list[float] = []

    async def wait_for_reset(stream: ServerStream) -> None:
        await stream.send_message(b"ready")
        try:
            await stream.receive_message()
        except StreamReset as exc:
            latency.append(time.perf_counter() - sent_at[0])
            assert exc.error_code == 8
            seen.set()
            raise

    async with running_server(plain_config(), {PATH: wait_for_reset}) as server:
        client = RawH2Client(await trio.open_tcp_stream("127.0.0.1", server.port))
        async with client.stream:
            await client.start()
            stream_id = client.open_call(PATH)
            await client.flush()
            with trio.fail_after(10):
                while not client.messages(stream_id):
                    assert await client.pump()
                client.h2.reset_stream(stream_id, 8)
                sent_at.append(time.perf_counter())
                await client.flush()
                await seen.wait()
                await server.stats.wait_until(lambda s: s.streams_open == 0)
        assert server.stats.streams_reset == 1
    print(f"\nRST_STREAM -> StreamReset in handler: {latency[0] * 1e6:.0f} us")
    assert latency[0] < 1.0


# ----------------------------------------------------------------------------- TLS and the peer


async def test_mutual_tls_client_certificate_reaches_the_handler(server_mtls: Any, tls_files: TlsFiles) -> None:
    """docs/design.md#purerpc-handler-blind: with a client CA configured, the handler sees the peer's address
    and its verified certificate (DER and getpeercert() form); a client without a certificate is refused at
    the handshake and does not disturb the server."""
    seen: dict[str, Any] = {}

    async def who(stream: ServerStream) -> None:
        seen.update(
            address=stream.remote_address, der=stream.peer_certificate_der, cert=stream.peer_certificate
        )
        await stream.receive_message()

    def with_cert(target: str) -> Any:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls_files.ca_pem,
            private_key=tls_files.client_key_pem,
            certificate_chain=tls_files.client_cert_pem,
        )
        with grpc.secure_channel(target, credentials, options=[OWN_CONNECTION]) as channel:
            return list(bytes_stream_method(channel, PATH)(iter([b"x"]), timeout=10))

    def without_cert(target: str) -> Any:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_files.ca_pem)
        with grpc.secure_channel(target, credentials, options=[OWN_CONNECTION]) as channel:
            try:
                list(bytes_stream_method(channel, PATH)(iter([b"x"]), timeout=10))
            except grpc.RpcError as exc:
                return exc.code()
        return None

    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=server_mtls)
    async with running_server(config, {PATH: who}) as server:
        assert await trio.to_thread.run_sync(without_cert, server.target) == grpc.StatusCode.UNAVAILABLE
        assert seen == {}
        assert await trio.to_thread.run_sync(with_cert, server.target) == []
    assert seen["address"][0] == "127.0.0.1"
    assert seen["der"] == tls_files.client_cert_der
    subject = dict(pair for rdn in seen["cert"]["subject"] for pair in rdn)
    assert subject["commonName"] == "peer-7"


async def test_tls_without_client_ca_has_no_peer_certificate(server_tls: Any, tls_files: TlsFiles) -> None:
    """Plain server TLS (the default product setup): address yes, certificate None."""
    seen: dict[str, Any] = {}

    async def who(stream: ServerStream) -> None:
        seen.update(address=stream.remote_address, der=stream.peer_certificate_der, cert=stream.peer_certificate)
        await stream.receive_message()

    def call(target: str) -> Any:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_files.ca_pem)
        with grpc.secure_channel(target, credentials, options=[OWN_CONNECTION]) as channel:
            return list(bytes_stream_method(channel, PATH)(iter([b"x"]), timeout=10))

    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=server_tls)
    async with running_server(config, {PATH: who}) as server:
        assert await trio.to_thread.run_sync(call, server.target) == []
    assert seen["address"][0] == "127.0.0.1"
    assert seen["der"] is None and seen["cert"] is None


async def test_handshake_failure_does_not_disturb_the_server(server_tls: Any, tls_files: TlsFiles) -> None:
    """Garbage instead of a TLS ClientHello: that connection is closed, the server keeps serving."""
    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=server_tls)

    def call(target: str) -> Any:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_files.ca_pem)
        with grpc.secure_channel(target, credentials, options=[OWN_CONNECTION]) as channel:
            return list(bytes_stream_method(channel, PATH)(iter([b"hi"]), timeout=10))

    async with running_server(config, {PATH: echo}) as server:
        garbage = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with garbage:
            await garbage.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(10):
                while await garbage.receive_some(1024):
                    pass
        assert await trio.to_thread.run_sync(call, server.target) == [b"hi"]
