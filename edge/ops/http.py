"""`serve_ops_http`: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1 on their own address.

    GET /healthz   200 "ok" while the process's Trio loop runs (liveness: answering proves it)
    GET /readyz    200 when the edge is ready for peers, else 503; JSON body says why
    GET /metrics   Prometheus text format (prometheus-client's exposition of the edge's registry)

HEAD works on each. Anything else: 404 (unknown path) or 405 (method other than GET/HEAD).

HTTP is parsed by h11 (sans-IO); this module only moves bytes, under bounds: a request's head is at
most MAX_REQUEST_HEAD_BYTES and its body (none is expected) at most MAX_REQUEST_BODY_BYTES; each
request must arrive and be answered within REQUEST_TIMEOUT seconds (idle keep-alive time included);
a connection serves at most MAX_REQUESTS_PER_CONNECTION requests; at most MAX_CONNECTIONS are open at
once (more are closed at once). The routing decision is a pure function (`respond`).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Final, cast

import attrs
import h11
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from edge.config import Address
from edge.ops.runtime import EdgeRuntime

log = structlog.get_logger(__name__)

MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
MAX_REQUEST_BODY_BYTES: Final = 64 * 1024
REQUEST_TIMEOUT: Final = 10.0
MAX_REQUESTS_PER_CONNECTION: Final = 1000
MAX_CONNECTIONS: Final = 64
RECEIVE_BYTES: Final = 16 * 1024
SERVER_HEADER: Final = b"giggityflix-edge"


@attrs.frozen
class Reply:
    status: int
    content_type: bytes
    body: bytes
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


def respond(method: bytes, target: bytes, runtime: EdgeRuntime) -> Reply:
    """The reply to one request (pure: reads the runtime's state, does no I/O)."""
    path = target.split(b"?", 1)[0]
    if path not in (b"/healthz", b"/readyz", b"/metrics"):
        return Reply(404, b"text/plain; charset=utf-8", b"not found: try /healthz, /readyz or /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return Reply(405, b"text/plain; charset=utf-8", b"method not allowed\n", ((b"allow", b"GET, HEAD"),))
    if path == b"/healthz":
        return Reply(200, b"text/plain; charset=utf-8", b"ok\n")
    if path == b"/readyz":
        state = runtime.health.describe()
        body = json.dumps(state, separators=(",", ":")).encode() + b"\n"
        return Reply(200 if state["ready"] else 503, b"application/json", body)
    return Reply(200, CONTENT_TYPE_LATEST.encode(), runtime.metrics.exposition())


async def serve_ops_http(
    address: Address,
    runtime: EdgeRuntime,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ops endpoint until cancelled. Reports the bound port (port 0: the real one)."""
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise OSError(exc.errno, f"ops HTTP endpoint cannot listen on {address}: {exc.strerror or exc}") from exc
    if address.port == 0 and len(listeners) > 1:
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    port: int = listeners[0].socket.getsockname()[1]
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, partial(_serve_connection, runtime=runtime, limiter=limiter), listeners)
        runtime.http_port = port
        log.info("ops_http_listening", host=address.host, port=port)
        task_status.started(port)


async def _serve_connection(stream: trio.SocketStream, *, runtime: EdgeRuntime, limiter: trio.CapacityLimiter) -> None:
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        log.warning("ops_http_too_many_connections", limit=MAX_CONNECTIONS)
        await trio.aclose_forcefully(stream)
        return
    try:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            with trio.move_on_after(REQUEST_TIMEOUT):
                if not await _serve_one(stream, connection, runtime):
                    break
                if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
                    connection.start_next_cycle()
                    continue
            break
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        limiter.release()
        await trio.aclose_forcefully(stream)


async def _serve_one(stream: trio.SocketStream, connection: h11.Connection, runtime: EdgeRuntime) -> bool:
    """Read one request and answer it. False when the connection is to be closed."""
    try:
        event = await _next_event(stream, connection)
        if not isinstance(event, h11.Request):
            return False  # the client closed the connection between requests
        # h11 bounds an *incomplete* head; one that completes within the last read can be a little
        # larger, so the bound is checked again on the parsed head.
        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_REQUEST_HEAD_BYTES:
            await _send(stream, connection, Reply(431, b"text/plain", b"request head too large\n"), head=False)
            return False
        body_bytes = 0
        while not isinstance(body_event := await _next_event(stream, connection), h11.EndOfMessage):
            if isinstance(body_event, h11.Data):
                body_bytes += len(body_event.data)
                if body_bytes > MAX_REQUEST_BODY_BYTES:
                    await _send(stream, connection, Reply(413, b"text/plain", b"request body too large\n"), head=False)
                    return False
            elif isinstance(body_event, h11.ConnectionClosed):
                return False
        reply = respond(event.method, event.target, runtime)
        await _send(stream, connection, reply, head=event.method == b"HEAD")
        return True
    except h11.RemoteProtocolError as error:
        if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = error.error_status_hint
            await _send(stream, connection, Reply(status, b"text/plain", b"bad request\n"), head=False)
        return False


async def _next_event(stream: trio.SocketStream, connection: h11.Connection) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(RECEIVE_BYTES))
            continue
        # mypy does not narrow h11's sentinel classes by identity: this is not NEED_DATA.
        return cast("h11.Event | type[h11.PAUSED]", event)


async def _send(stream: trio.SocketStream, connection: h11.Connection, reply: Reply, *, head: bool) -> None:
    headers = [
        (b"content-type", reply.content_type),
        (b"content-length", str(len(reply.body)).encode()),
        (b"server", SERVER_HEADER),
        (b"cache-control", b"no-store"),
        *reply.extra_headers,
    ]
    data = connection.send(h11.Response(status_code=reply.status, headers=headers)) or b""
    if not head:
        data += connection.send(h11.Data(data=reply.body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
