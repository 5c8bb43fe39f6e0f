"""`serve_ops_http`: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1 on their own address.

    GET /healthz   200 "ok" while the process's Trio loop runs (liveness: answering proves it)
    GET /readyz    200 when the edge is ready for peers, else 503; JSON body says why
    GET /metrics   the edge's registry: OpenMetrics text 1.0.0 when the Accept header prefers it
                   (`application/openmetrics-text`, as Prometheus asks by default), else Prometheus
                   text format 0.0.4 (`wants_openmetrics`); `Vary: Accept`

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
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE

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
#: OpenMetrics versions answered with OpenMetrics 1.0.0 text (0.0.1 is what Prometheus 2 calls it).
OPENMETRICS_VERSIONS: Final = (None, b"1.0.0", b"0.0.1")
TEXT_MEDIA_RANGES: Final = (b"text/plain", b"text/*", b"*/*")


@attrs.frozen
class Reply:
    status: int
    content_type: bytes
    body: bytes
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


def wants_openmetrics(accept: bytes) -> bool:
    """Whether an Accept header prefers OpenMetrics text to the Prometheus text format.

    Each media range's `q` counts (default 1, 0 means "not this"); OpenMetrics wins ties, since a client
    that names it asks for it. An OpenMetrics range with a version other than 1.0.0 (or 0.0.1) does not
    count: that format is not offered. No header, or nothing usable in it: the text format.
    """
    openmetrics_q = text_q = 0.0
    for media_range in accept.split(b","):
        media_type, *parameters = (part.strip() for part in media_range.split(b";"))
        q = 1.0
        version: bytes | None = None
        for parameter in parameters:
            key, _, value = parameter.partition(b"=")
            key, value = key.strip().lower(), value.strip().strip(b'"')
            if key == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key == b"version":
                version = value
        media_type = media_type.lower()
        if media_type == b"application/openmetrics-text" and version in OPENMETRICS_VERSIONS:
            openmetrics_q = max(openmetrics_q, q)
        elif media_type in TEXT_MEDIA_RANGES:
            text_q = max(text_q, q)
    return openmetrics_q > 0 and openmetrics_q >= text_q


def respond(method: bytes, target: bytes, runtime: EdgeRuntime, *, accept: bytes = b"") -> Reply:
    """The reply to one request (pure: reads the runtime's state, does no I/O). `accept`: the request's
    Accept header (several joined with commas)."""
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
    vary = ((b"vary", b"accept"),)
    if wants_openmetrics(accept):
        return Reply(200, OPENMETRICS_CONTENT_TYPE.encode(), runtime.metrics.exposition(openmetrics_format=True), vary)
    return Reply(200, CONTENT_TYPE_PLAIN_0_0_4.encode(), runtime.metrics.exposition(), vary)


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
        accept = b",".join(value for name, value in event.headers if name == b"accept")
        reply = respond(event.method, event.target, runtime, accept=accept)
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
