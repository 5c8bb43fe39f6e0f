"""The transport's metrics (memory streams, MockClock): every routed call is started, its messages
counted, and handled once with the code the client got (CANCELLED when it got none), timed in Trio
time; unknown methods are not counted; failed TLS handshakes are counted by cause."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from edge.grpc import GrpcServerConfig, GrpcServerStats, ServerStream, Status, StatusCode, serve_grpc_connection
from edge.grpc.tls import handshake_failure_cause
from edge.ops.grpc_metrics import GrpcServerMetrics
from testing.harness import server_metrics

from .support import RawH2Client, grpc_frame

PATH = "/test.Metrics/Call"
LABELS = {"grpc_type": "unknown", "grpc_service": "test.Metrics", "grpc_method": "Call"}
CONFIG = GrpcServerConfig(host="in-memory", port=0, ssl_context=None, shutdown_grace=5)


def value(metrics: GrpcServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels}) or 0.0


def handled(metrics: GrpcServerMetrics) -> dict[str, float]:
    counts = {code.name: value(metrics, "grpc_server_handled_total", grpc_code=code.name) for code in StatusCode}
    return {code: count for code, count in counts.items() if count}


@asynccontextmanager
async def served(
    handler: Any,
) -> AsyncIterator[tuple[RawH2Client, GrpcServerStats, GrpcServerMetrics, trio.CancelScope]]:
    server_end, client_end = trio.testing.memory_stream_pair()
    stats = GrpcServerStats()
    metrics = server_metrics()
    scope = trio.CancelScope()

    async def serve() -> None:
        with scope:
            await serve_grpc_connection(server_end, {PATH: handler}, CONFIG, metrics=metrics, stats=stats)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = RawH2Client(client_end)
        await client.start()
        nursery.start_soon(client.run)
        yield client, stats, metrics, scope
        nursery.cancel_scope.cancel()


async def test_a_call_is_counted_with_its_messages_code_and_duration(autojump_clock: Any) -> None:
    async def echo_twice_slowly(stream: ServerStream) -> Status:
        while (message := await stream.receive_message()) is not None:
            await trio.sleep(1.5)
            await stream.send_message(message)
            await stream.send_message(message)
        return Status(StatusCode.NOT_FOUND, "done")

    async with served(echo_twice_slowly) as (client, _, metrics, _):
        stream_id = client.open_call(PATH)
        client.send_raw(stream_id, grpc_frame(b"a"))
        client.send_raw(stream_id, grpc_frame(b"b"), end=True)
        await client.flush()
        await client.wait_until(lambda: stream_id in client.ended)
        unknown = client.open_call("/test.Metrics/Nope", end=True)
        await client.flush()
        await client.wait_until(lambda: unknown in client.ended)
    assert value(metrics, "grpc_server_started_total") == 1
    assert value(metrics, "grpc_server_msg_received_total") == 2
    assert value(metrics, "grpc_server_msg_sent_total") == 4
    assert handled(metrics) == {"NOT_FOUND": 1}
    assert value(metrics, "grpc_server_handling_seconds_sum") == pytest.approx(3.0, abs=0.01)
    # The unknown method (UNIMPLEMENTED) left no series behind: its name came from the client.
    assert metrics.registry.get_sample_value("grpc_server_started_total", {**LABELS, "grpc_method": "Nope"}) is None


@pytest.mark.parametrize("ending", ["handler_fails", "grpc_timeout", "client_reset", "shutdown"])
async def test_every_ending_is_handled_once_with_the_code_the_client_got(autojump_clock: Any, ending: str) -> None:
    async def handler(stream: ServerStream) -> None:
        if ending == "handler_fails":
            raise RuntimeError("a bug")
        await trio.sleep_forever()

    async with served(handler) as (client, stats, metrics, scope):
        timeout = (("grpc-timeout", "20S"),) if ending == "grpc_timeout" else ()
        stream_id = client.open_call(PATH, extra_headers=timeout)
        await client.flush()
        await stats.wait_until(lambda s: s.streams_started == 1)
        if ending == "client_reset":
            client.h2.reset_stream(stream_id, 8)
            await client.flush()
        elif ending == "shutdown":
            scope.cancel()
        await stats.wait_until(lambda s: s.streams_open == 0)
    expected = {
        "handler_fails": "INTERNAL",
        "grpc_timeout": "DEADLINE_EXCEEDED",
        "client_reset": "CANCELLED",  # nothing was sent: counted as the handler saw it
        "shutdown": "UNAVAILABLE",
    }[ending]
    assert handled(metrics) == {expected: 1}
    assert value(metrics, "grpc_server_started_total") == 1
    assert value(metrics, "grpc_server_handling_seconds_count") == 1
    if ending == "grpc_timeout":
        assert value(metrics, "grpc_server_handling_seconds_sum") == pytest.approx(20, abs=0.01)
    if ending == "client_reset":
        assert value(metrics, "grpc_server_handling_seconds_sum") == pytest.approx(5, abs=0.01)  # the grace


async def test_failed_tls_handshakes_are_counted_by_cause(autojump_clock: Any, server_tls: ssl.SSLContext) -> None:
    """A client that closes half-way through its ClientHello: `eof`; one that speaks plaintext (h2c's
    preface) to the TLS port: `tls_error`; one that never finishes: `timeout`."""
    metrics = server_metrics()
    config = GrpcServerConfig(host="in-memory", port=0, ssl_context=server_tls, tls_handshake_timeout=4)

    async def handshake(sent: bytes, *, close: bool) -> None:
        server_end, client_end = trio.testing.memory_stream_pair()
        server = trio.SSLStream(server_end, server_tls, server_side=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_grpc_connection(server, {}, config, metrics=metrics))
            await client_end.send_all(sent)
            if close:
                await client_end.aclose()
        await client_end.aclose()

    await handshake(b"\x16\x03\x01\x00", close=True)  # the start of a TLS record, then EOF
    await handshake(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", close=False)
    await handshake(b"", close=False)

    def failures(cause: str) -> float:
        return metrics.registry.get_sample_value("giggityflix_edge_grpc_tls_handshake_failures_total", {"cause": cause})

    assert {cause: failures(cause) for cause in ("timeout", "eof", "reset", "tls_error", "alpn")} == {
        "timeout": 1, "eof": 1, "reset": 0, "tls_error": 1, "alpn": 0,
    }  # fmt: skip


def test_handshake_failure_causes_come_from_the_underlying_error() -> None:
    def broken(cause: BaseException | None) -> trio.BrokenResourceError:
        error = trio.BrokenResourceError()
        error.__cause__ = cause
        return error

    assert handshake_failure_cause(broken(ssl.SSLEOFError())) == "eof"
    assert handshake_failure_cause(broken(ssl.SSLError(1, "[SSL: UNEXPECTED_EOF_WHILE_READING] eof"))) == "eof"
    assert handshake_failure_cause(broken(ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] unknown ca"))) == "tls_error"
    assert handshake_failure_cause(broken(ssl.SSLCertVerificationError())) == "tls_error"
    assert handshake_failure_cause(broken(ConnectionResetError())) == "reset"
    assert handshake_failure_cause(broken(None)) == "reset"
