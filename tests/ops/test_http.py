"""The ops HTTP endpoint over a real socket: keep-alive, HEAD, bounded heads, and a client that
stalls is cut off at REQUEST_TIMEOUT (MockClock: no wall-clock time)."""

from __future__ import annotations

import trio

from edge.config import Address
from edge.ops.http import MAX_REQUEST_HEAD_BYTES, REQUEST_TIMEOUT, serve_ops_http
from edge.ops.runtime import EdgeRuntime


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def test_keep_alive_head_and_limits(autojump_clock):
    runtime = EdgeRuntime.create("e")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ops_http, Address("127.0.0.1", 0), runtime)
        assert runtime.http_port == port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await read_response(stream)
        assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\nok\n")
        await stream.send_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = await read_until_closed(stream)  # same connection; closed after, as asked
        assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"\r\n\r\n")
        await stream.aclose()

        huge = await trio.open_tcp_stream("127.0.0.1", port)
        await huge.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_REQUEST_HEAD_BYTES + 10) + b"\r\n\r\n")
        refused = await read_until_closed(huge)
        assert refused.startswith(b"HTTP/1.1 431 ")
        await huge.aclose()

        garbage = await trio.open_tcp_stream("127.0.0.1", port)
        await garbage.send_all(b"\x16\x03\x01 this is TLS, not HTTP\r\n\r\n")
        assert (await read_until_closed(garbage)).startswith(b"HTTP/1.1 400 ")
        await garbage.aclose()

        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        await stalled.send_all(b"GET /metr")
        began = trio.current_time()
        assert await read_until_closed(stalled) == b""
        assert REQUEST_TIMEOUT <= trio.current_time() - began < REQUEST_TIMEOUT + 1
        await stalled.aclose()
        nursery.cancel_scope.cancel()


async def test_metrics_format_follows_the_accept_header():
    """The Accept header Prometheus sends gets OpenMetrics; none gets text format 0.0.4; neither has
    `_created` series."""
    runtime = EdgeRuntime.create("e")
    runtime.metrics.session_started()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ops_http, Address("127.0.0.1", 0), runtime)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            b"Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\r\n"
        )
        openmetrics = await read_response(stream)
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        text = await read_response(stream)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    om_head, _, om_body = openmetrics.partition(b"\r\n\r\n")
    assert b"content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n" in om_head.lower()
    assert b"vary: accept" in om_head.lower()
    assert om_body.endswith(b"# EOF\n") and b"giggityflix_edge_sessions_started_total 1.0\n" in om_body
    text_head, _, text_body = text.partition(b"\r\n\r\n")
    assert b"content-type: text/plain; version=0.0.4; charset=utf-8\r\n" in text_head.lower()
    assert b"# EOF" not in text_body and b"giggityflix_edge_sessions_started_total 1.0\n" in text_body
    assert b"_created" not in om_body and b"_created" not in text_body
