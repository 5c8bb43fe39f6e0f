"""`serve_ops_http`: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1 on their own address.

    GET /healthz   200 "ok" while the process's Trio loop runs (liveness: answering proves it)
    GET /readyz    200 when the edge is ready for peers, else 503; JSON body says why
    GET /metrics   the edge's registry: OpenMetrics text 1.0.0 when the Accept header prefers it
                   (`application/openmetrics-text`, as Prometheus asks by default), else Prometheus
                   text format 0.0.4 (`wants_openmetrics`); `Vary: Accept`

HEAD works on each. Anything else: 404 (unknown path) or 405 (method other than GET/HEAD).

HTTP is parsed by h11 (sans-IO); this module only moves bytes, under bounds: a request's head is at
most MAX_REQUEST_HEAD_BYTES and its body (none is expected) at most MAX_REQUEST_BODY_BYTES; a request's
head must be complete HEAD_TIMEOUT seconds after the connection opened or after the request's first
byte (a keep-alive connection may wait KEEPALIVE_TIMEOUT for that first byte); the rest of the request
and the reply get REQUEST_TIMEOUT; a connection serves at most MAX_REQUESTS_PER_CONNECTION requests.
At most MAX_CONNECTIONS are open, MAX_CONNECTIONS_PER_ADDRESS from one address: a new connection over
either closes the oldest idle one instead of being refused (edge.ops.http_slots), so probes answer while
slowloris clients hold connections. Closed-for-room and head timeouts are counted in the edge's refusal
tally (one summary line per interval, edge.grpc.refusals). The routing decision is a pure function
(`respond`).

Task tree: `serve_ops_http` owns a nursery running `trio.serve_listeners`, which runs one
`_serve_connection` task per accepted socket, each in the cancel scope its slot's eviction cancels.
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
from edge.grpc.connection_limits import address_key
from edge.grpc.refusals import HTTP_EVICTED, HTTP_HEAD_TIMEOUT, RefusalTally
from edge.grpc.sockets import socket_peer_address
from edge.ops.http_slots import ConnectionSlots, Slot
from edge.ops.runtime import EdgeRuntime

log = structlog.get_logger(__name__)

MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
MAX_REQUEST_BODY_BYTES: Final = 64 * 1024
#: Seconds for a request's head, from the connection's start or from the request's first byte.
HEAD_TIMEOUT: Final = 3.0
#: Seconds a kept-alive connection may wait for the first byte of its next request.
KEEPALIVE_TIMEOUT: Final = 10.0
#: Seconds for the rest of a request (its body) and the reply, once its head is in.
REQUEST_TIMEOUT: Final = 10.0
MAX_REQUESTS_PER_CONNECTION: Final = 1000
MAX_CONNECTIONS: Final = 64
MAX_CONNECTIONS_PER_ADDRESS: Final = 16
#: A connection answering a request for longer than this may be closed for a newer one (a client that
#: does not read its reply holds nothing for long).
BUSY_GRACE: Final = 1.0
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
    slots: ConnectionSlots | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ops endpoint until cancelled. Reports the bound port (port 0: the real one).
    `slots`: the connection table (default: MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS, BUSY_GRACE)."""
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise OSError(exc.errno, f"ops HTTP endpoint cannot listen on {address}: {exc.strerror or exc}") from exc
    if address.port == 0 and len(listeners) > 1:
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    port: int = listeners[0].socket.getsockname()[1]
    if slots is None:
        slots = ConnectionSlots(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS, BUSY_GRACE)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, partial(serve_ops_http_connection, runtime=runtime, slots=slots), listeners)
        runtime.http_port = port
        log.info("ops_http_listening", host=address.host, port=port)
        task_status.started(port)


async def serve_ops_http_connection(
    stream: trio.abc.Stream,
    *,
    runtime: EdgeRuntime,
    slots: ConnectionSlots,
    remote_address: tuple[str, int] | None = None,
) -> None:
    """Serve one accepted connection until it is done, times out, or is closed for a newer one; close
    it. `remote_address` defaults to the socket's peer (tests over socket pairs pass one)."""
    if remote_address is None and isinstance(stream, trio.SocketStream):
        remote_address = socket_peer_address(stream.socket)
    now = trio.current_time()
    slot, victims = slots.open(address_key(remote_address[0] if remote_address else None), now)
    refusals = runtime.refusals
    for victim in victims:
        victim.handle.cancel()
        refusals.count(HTTP_EVICTED)
    if slot is None:  # every candidate is answering a request right now
        refusals.count(HTTP_EVICTED)
        await trio.aclose_forcefully(stream)
        return
    slot.handle = trio.CancelScope()
    try:
        with slot.handle:
            await _serve_requests(stream, runtime, slot, refusals)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        slots.close(slot)
        await trio.aclose_forcefully(stream)


@attrs.define
class _RequestClock:
    """The deadline of the request being read, moved as it arrives (see the module docstring)."""

    scope: trio.CancelScope
    slot: Slot
    #: "waiting" (for a kept-alive connection's next request), "head" (arriving), "answering".
    phase: str

    def bytes_arrived(self) -> None:
        if self.phase == "waiting":
            self.phase = "head"
            self.scope.deadline = trio.current_time() + HEAD_TIMEOUT

    def head_complete(self) -> None:
        self.phase = "answering"
        self.slot.busy_since = trio.current_time()
        self.scope.deadline = trio.current_time() + REQUEST_TIMEOUT


async def _serve_requests(stream: trio.abc.Stream, runtime: EdgeRuntime, slot: Slot, refusals: RefusalTally) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    clock = _RequestClock(trio.CancelScope(), slot, "head")  # a new connection owes its head at once
    clock.scope.deadline = trio.current_time() + HEAD_TIMEOUT
    for _ in range(MAX_REQUESTS_PER_CONNECTION):
        with clock.scope:
            served = await _serve_one(stream, connection, runtime, clock)
        slot.busy_since = None
        if clock.scope.cancelled_caught:
            if clock.phase == "head":
                refusals.count(HTTP_HEAD_TIMEOUT)
            return
        if not served or not (connection.our_state is h11.DONE and connection.their_state is h11.DONE):
            return
        connection.start_next_cycle()
        clock = _RequestClock(trio.CancelScope(deadline=trio.current_time() + KEEPALIVE_TIMEOUT), slot, "waiting")
        if connection.trailing_data[0]:  # the next request's first bytes came with the last one
            clock.bytes_arrived()


async def _serve_one(stream: trio.abc.Stream, connection: h11.Connection, runtime: EdgeRuntime, clock: _RequestClock) -> bool:
    """Read one request and answer it. False when the connection is to be closed."""
    try:
        event = await _next_event(stream, connection, clock)
        if not isinstance(event, h11.Request):
            return False  # the client closed the connection between requests
        clock.head_complete()
        # h11 bounds an *incomplete* head; one that completes within the last read can be a little
        # larger, so the bound is checked again on the parsed head.
        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_REQUEST_HEAD_BYTES:
            await _send(stream, connection, Reply(431, b"text/plain", b"request head too large\n"), head=False)
            return False
        body_bytes = 0
        while not isinstance(body_event := await _next_event(stream, connection, clock), h11.EndOfMessage):
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


async def _next_event(
    stream: trio.abc.Stream, connection: h11.Connection, clock: _RequestClock
) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(RECEIVE_BYTES))
            if data:
                clock.bytes_arrived()
            connection.receive_data(data)
            continue
        # mypy does not narrow h11's sentinel classes by identity: this is not NEED_DATA.
        return cast("h11.Event | type[h11.PAUSED]", event)


async def _send(stream: trio.abc.Stream, connection: h11.Connection, reply: Reply, *, head: bool) -> None:
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
