"""`GrpcServerMetrics`: the gRPC server's metrics, in the shape of the grpc-ecosystem libraries.

Names and labels are those of go-grpc-prometheus and py-grpc-prometheus, so the dashboards and alerts
written for any gRPC server work on the edge's peer port unchanged:

    grpc_server_started_total{grpc_type, grpc_service, grpc_method}
    grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}
    grpc_server_msg_received_total{grpc_type, grpc_service, grpc_method}
    grpc_server_msg_sent_total{grpc_type, grpc_service, grpc_method}
    grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}     histogram

`grpc_type` is `unary`, `client_stream`, `server_stream` or `bidi_stream`; `grpc_code` the status
code's name (`OK`, `UNAVAILABLE`, ...). A call the client reset, or whose connection was lost, gets no
status on the wire and counts as `CANCELLED`, as a grpc-go handler would see it. Calls to paths the
server does not route (answered UNIMPLEMENTED) are not counted: their names come from clients, and
labels only take values the edge chooses.

Next to them, one edge metric of the same transport: TLS handshakes that failed, by cause.

The transport reports through two calls (`GrpcServerMetrics` is the `edge.grpc.ServerMetrics` the edge
passes to `serve_grpc`): `call_started(path, now)`, which returns the call's
`GrpcCallMetrics` (`received()`, `sent()`, `handled(code, now)`), and `handshake_failed(cause)`.
Times are Trio times passed in by the caller, so this module needs no event loop and MockClock
drives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import attrs
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram

from edge.grpc import StatusCode
from edge.proto import ops as ops_pb
from edge.proto import pb

#: From a unary health check (milliseconds) to a peer's `Connect` stream (hours, days).
HANDLING_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0, 6 * 3600.0, 24 * 3600.0,
)  # fmt: skip
#: Why a TLS handshake on the peer port failed (`edge.grpc.tls.handshake_failure_cause`).
HANDSHAKE_FAILURE_CAUSES: Final = ("timeout", "eof", "reset", "tls_error", "alpn")
METHOD_LABELS: Final = ("grpc_type", "grpc_service", "grpc_method")


@attrs.frozen
class Method:
    """One gRPC method as the metrics label it."""

    type: str
    service: str
    name: str

    def labels(self) -> tuple[str, str, str]:
        return (self.type, self.service, self.name)


def grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return "bidi_stream" if server_streaming else "client_stream"
    return "server_stream" if server_streaming else "unary"


def methods_of(services: Iterable[ServiceDescriptor]) -> dict[str, Method]:
    """`{"/package.Service/Method": Method}` for every method of `services`."""
    return {
        f"/{service.full_name}/{method.name}": Method(
            grpc_type(method.client_streaming, method.server_streaming), service.full_name, method.name
        )
        for service in services
        for method in service.methods
    }


def served_methods() -> dict[str, Method]:
    """Every method the edge serves on its peer port: `Connect`, health, and both reflections."""
    return methods_of(
        [
            *pb.DESCRIPTOR.services_by_name.values(),
            *(
                ops_pb.POOL.FindServiceByName(name)
                for name in (ops_pb.HEALTH_SERVICE, ops_pb.REFLECTION_V1_SERVICE, ops_pb.REFLECTION_V1ALPHA_SERVICE)
            ),
        ]
    )


def method_from_path(path: str) -> Method:
    """A routed method without a descriptor (test routes): labels from its path, type `unknown`."""
    service, _, name = path.lstrip("/").rpartition("/")
    return Method("unknown", service or "unknown", name or "unknown")


class GrpcCallMetrics:
    """The counters of one call, resolved once when it starts (messages are counted on hot paths)."""

    __slots__ = ("_handled", "_handling", "_received", "_sent", "_started_at")

    def __init__(self, children: _MethodChildren, started_at: float) -> None:
        self._received = children.received
        self._sent = children.sent
        self._handled = children.handled
        self._handling = children.handling
        self._started_at = started_at

    def received(self) -> None:
        """One message read from the client."""
        self._received.inc()

    def sent(self) -> None:
        """One message written to the client."""
        self._sent.inc()

    def handled(self, code: StatusCode, now: float) -> None:
        """The call ended with `code` at Trio time `now` (CANCELLED when the client or its connection
        went away and no status was sent). Call once per call."""
        self._handled[code].inc()
        self._handling.observe(max(0.0, now - self._started_at))


@attrs.frozen
class _MethodChildren:
    """The label children of one method: looked up once, not per message."""

    started: Counter
    received: Counter
    sent: Counter
    handling: Histogram
    handled: Mapping[StatusCode, Counter]


@attrs.define(eq=False)
class GrpcServerMetrics:
    """The transport's metrics. Build with `GrpcServerMetrics.create(registry)`."""

    #: Where they are registered (read values with `registry.get_sample_value`).
    registry: CollectorRegistry
    started: Counter
    handled: Counter
    msg_received: Counter
    msg_sent: Counter
    handling_seconds: Histogram
    handshake_failures: Counter
    _methods: dict[str, Method]
    _children: dict[str, _MethodChildren] = attrs.field(factory=dict, init=False)

    @classmethod
    def create(cls, registry: CollectorRegistry, methods: Mapping[str, Method] | None = None) -> GrpcServerMetrics:
        """Register the metrics in `registry`. Every method of `methods` (default: `served_methods()`)
        is pre-initialised with every status code, so a dashboard reads 0 rather than nothing."""
        metrics = cls(
            registry=registry,
            started=Counter(
                "grpc_server_started", "RPCs started on the server.", METHOD_LABELS, registry=registry
            ),
            handled=Counter(
                "grpc_server_handled",
                "RPCs completed on the server, regardless of success or failure.",
                (*METHOD_LABELS, "grpc_code"),
                registry=registry,
            ),
            msg_received=Counter(
                "grpc_server_msg_received",
                "RPC stream messages received on the server.",
                METHOD_LABELS,
                registry=registry,
            ),
            msg_sent=Counter(
                "grpc_server_msg_sent", "gRPC stream messages sent by the server.", METHOD_LABELS, registry=registry
            ),
            handling_seconds=Histogram(
                "grpc_server_handling_seconds",
                "Time from the start of an RPC until the server ended it (streams: their whole life).",
                METHOD_LABELS,
                buckets=HANDLING_BUCKETS,
                registry=registry,
            ),
            handshake_failures=Counter(
                "giggityflix_edge_grpc_tls_handshake_failures",
                "TLS handshakes on the peer port that failed, by cause.",
                ("cause",),
                registry=registry,
            ),
            methods=dict(methods if methods is not None else served_methods()),
        )
        for path in metrics._methods:
            metrics._children_of(path)
        for cause in HANDSHAKE_FAILURE_CAUSES:
            metrics.handshake_failures.labels(cause=cause)
        return metrics

    def call_started(self, path: str, now: float) -> GrpcCallMetrics:
        """A routed call on `path` started at Trio time `now`."""
        children = self._children_of(path)
        children.started.inc()
        return GrpcCallMetrics(children, now)

    def handshake_failed(self, cause: str) -> None:
        self.handshake_failures.labels(cause=cause).inc()

    def _children_of(self, path: str) -> _MethodChildren:
        children = self._children.get(path)
        if children is None:
            method = self._methods.get(path) or method_from_path(path)
            labels = method.labels()
            children = _MethodChildren(
                started=self.started.labels(*labels),
                received=self.msg_received.labels(*labels),
                sent=self.msg_sent.labels(*labels),
                handling=self.handling_seconds.labels(*labels),
                handled={code: self.handled.labels(*labels, code.name) for code in StatusCode},
            )
            self._children[path] = children
        return children
