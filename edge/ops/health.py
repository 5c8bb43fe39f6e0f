"""Is the edge ready for peers? One answer, read by the gRPC health service, `/readyz` and `/metrics`.

The edge is ready (gRPC `SERVING`, `/readyz` 200) when both hold:
* the Kafka bridge is connected (`KafkaState.ready`: the producer, and the command consumer once it
  is enabled), so what peers say reaches the backend and commands reach peers, and the presence view
  has read the presence topic to its end, so epochs and forwarding know the whole fleet;
* the peer server accepts new streams: bound and listening, and not draining.

`EdgeHealth` holds the second fact and reads the first from `KafkaState` (edge.ops.readiness). Watchers (gRPC
`Health/Watch`) wait for either one to change, through the two objects' `changed` events: no polling.

The gRPC side (`HealthService`) serves `grpc.health.v1.Health` Check, Watch and List on the peer port
through our own transport. It knows two service names: "" (the whole server) and the peer service
`giggityflix.edge.v1.PeerEdgeService`; both report the edge's readiness. Any other name gets
NOT_FOUND from Check and SERVICE_UNKNOWN from Watch, as the health protocol says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import structlog
import trio
from google.protobuf.message import DecodeError

from edge.grpc import ServerStream, Status, StatusCode
from edge.ops.readiness import KafkaState
from edge.proto import SERVICE_NAME
from edge.proto import ops as ops_pb

log = structlog.get_logger(__name__)

SERVING: Final[int] = ops_pb.health.HealthCheckResponse.SERVING
NOT_SERVING: Final[int] = ops_pb.health.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Final = ops_pb.health.HealthCheckResponse.SERVICE_UNKNOWN

#: Service names the health service answers for: "" is the whole server.
KNOWN_SERVICES: Final = ("", SERVICE_NAME)
#: Watch streams open at once, edge-wide (they are long-lived and not behind peer admission).
MAX_WATCH_STREAMS: Final = 256


@attrs.define(eq=False)
class EdgeHealth:
    """Readiness of one edge: the Kafka bridge's state and whether the peer server accepts streams."""

    kafka: KafkaState = attrs.field(factory=KafkaState)
    accepting: bool = False
    changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def ready(self) -> bool:
        return self.accepting and self.kafka.ready

    def set_accepting(self, accepting: bool) -> None:
        if accepting != self.accepting:
            self.accepting = accepting
            event, self.changed = self.changed, trio.Event()
            event.set()

    def reasons(self) -> list[str]:
        """Why the edge is not ready (empty when it is), in words for `/readyz` and logs."""
        reasons = []
        if not self.accepting:
            reasons.append("peer server not accepting streams (starting or draining)")
        if not self.kafka.producer_connected:
            reasons.append("kafka producer not connected")
        if self.kafka.consumer_enabled and not self.kafka.consumer_connected:
            reasons.append("kafka command consumer not connected")
        if self.kafka.presence_enabled and not self.kafka.presence_caught_up:
            reasons.append("presence view not caught up with the presence topic")
        return reasons

    def describe(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "accepting_streams": self.accepting,
            "kafka_producer_connected": self.kafka.producer_connected,
            "kafka_consumer_connected": self.kafka.consumer_connected if self.kafka.consumer_enabled else None,
            "reasons": self.reasons(),
        }

    async def wait_changed(self) -> None:
        """Return once readiness may have changed (either fact moved)."""
        await first_of(self.changed.wait, self.kafka.changed.wait)


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Run `waits` concurrently; return as soon as one of them returns (the others are cancelled)."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


def serving_status(service: str, ready: bool) -> int | None:
    """The health status of `service` (None: not a service this server knows)."""
    if service not in KNOWN_SERVICES:
        return None
    return SERVING if ready else NOT_SERVING


async def read_unary_request(stream: ServerStream, message_type: Any) -> Any:
    """The single request message of a unary or server-streaming call, or the Status to end it with."""
    data = await stream.receive_message()
    if data is None:
        return Status(StatusCode.INVALID_ARGUMENT, "missing request message")
    try:
        return message_type.FromString(data)
    except DecodeError:
        return Status(StatusCode.INVALID_ARGUMENT, f"request is not a valid {message_type.DESCRIPTOR.name}")


@attrs.frozen
class HealthService:
    """`grpc.health.v1.Health` handlers for our transport (raw bytes in, raw bytes out)."""

    health: EdgeHealth
    watchers: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(MAX_WATCH_STREAMS))

    async def check(self, stream: ServerStream) -> Status:
        request = await read_unary_request(stream, ops_pb.health.HealthCheckRequest)
        if isinstance(request, Status):
            return request
        status = serving_status(request.service, self.health.ready)
        if status is None:
            return Status(StatusCode.NOT_FOUND, "unknown service")
        await stream.send_message(_response(status))
        return Status(StatusCode.OK)

    async def list(self, stream: ServerStream) -> Status:
        request = await read_unary_request(stream, ops_pb.health.HealthListRequest)
        if isinstance(request, Status):
            return request
        response = ops_pb.health.HealthListResponse()
        for service in KNOWN_SERVICES:
            response.statuses[service].status = serving_status(service, self.health.ready)
        await stream.send_message(response.SerializeToString())
        return Status(StatusCode.OK)

    async def watch(self, stream: ServerStream) -> Status | None:
        """Send the current status, then every change, until the client cancels or the edge stops."""
        try:
            self.watchers.acquire_nowait()
        except trio.WouldBlock:
            return Status(StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_WATCH_STREAMS} health watchers")
        try:
            return await self._watch(stream)
        finally:
            self.watchers.release()

    async def _watch(self, stream: ServerStream) -> Status | None:
        request = await read_unary_request(stream, ops_pb.health.HealthCheckRequest)
        if isinstance(request, Status):
            return request
        sent: int | None = None
        while True:
            status = serving_status(request.service, self.health.ready)
            current = SERVICE_UNKNOWN if status is None else status
            if current != sent:
                await stream.send_message(_response(current))
                sent = current
            await first_of(self.health.wait_changed, stream.wait_terminated)
            if stream.terminated:
                return None


def _response(status: int) -> bytes:
    response: bytes = ops_pb.health.HealthCheckResponse(status=status).SerializeToString()
    return response
