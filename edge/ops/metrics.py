"""`EdgeMetrics`: every Prometheus metric of one edge, in a registry of its own.

One `EdgeMetrics` is made per `serve` call and passed down through the objects that already travel
there (the stream handler, the sessions, the bridge); nothing registers in prometheus-client's global
registry, so two edges in one process (tests, embedding) never share or collide. `/metrics` renders
`metrics.registry`.

Naming follows Prometheus conventions: prefix `giggityflix_edge_`, base units (seconds, bytes),
`_total` on counters, labels only with small closed value sets (reasons, message kinds, command
types, topics: never peer ids). Values the edge already keeps elsewhere (the event channel's depth and bytes,
the Kafka connection state, open gRPC connections) are read at scrape time through callbacks bound
with `observe_*`, so the hot paths pay nothing for them.

Besides the edge's own metrics the registry holds prometheus-client's `ProcessCollector` (`process_*`:
resident memory, open and maximum file descriptors, CPU seconds, start time; read from /proc at scrape
time, so on Linux only) and the gRPC server's metrics in the grpc-ecosystem shape (`grpc_server_*`,
edge.ops.grpc_metrics).

No `_created` series: `exposition` renders the registry through `_WithoutCreated`, which drops them
from this registry's families. prometheus-client 0.26 has no per-registry switch, and its
`disable_created_metrics()` is process-global: it would change the metrics of a program embedding the
edge. Counters are read with `rate()`/`increase()`, which need no creation time.

Every metric, with its meaning, is listed in docs/operations.md.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

import edge
from edge.ops.grpc_metrics import GrpcServerMetrics

PREFIX: Final = "giggityflix_edge"

#: Produce latency: one batch from the crossing into asyncio until every ack (acks=all).
PRODUCE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Delivery latency: a command from its arrival at the edge until it is written to its peer's stream
#: (retries included, so the buckets reach past RETRY_MAX_DELAY_MS times a few retries).
DELIVERY_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


#: Causes of `registrations_refused`, pre-created so a dashboard reads 0 rather than nothing.
REFUSAL_CAUSES: Final = (
    # admission, before the stream is read (edge.peers.admission)
    "address_throttled",
    "unregistered_streams_full",
    "unregistered_share",
    "unregistered_displaced",
    # the registration itself (edge.peers.handler)
    "invalid",
    "unauthenticated",
    "permission_denied",
    "closed",
    "handshake_timeout",
    "resource_exhausted",
    "peer_limit",
    "takeover_timeout",
)
#: Reasons of `sessions_ended` (edge.records.DisconnectReason), pre-created.
END_REASONS: Final = ("stream_closed", "timeout", "replaced", "shutdown", "protocol_error", "error")


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def edge_version() -> str:
    """`edge.__version__` (read when called: `edge` imports this module while it initialises)."""
    return edge.__version__


class _WithoutCreated(Collector):
    """A view of a registry that leaves out every `_created` sample (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            if any(sample.name == created for sample in family.samples):
                # A copy: a collector may hand out the same family object on every scrape.
                copy = Metric(family.name, family.documentation, family.type, family.unit)
                copy.samples = [sample for sample in family.samples if sample.name != created]
                family = copy
            yield family


class _LiveCollector:
    """Gauges computed when scraped, from callbacks registered by the components that own the values."""

    def __init__(self) -> None:
        self._sources: list[tuple[str, str, tuple[str, ...], Callable[[], list[tuple[tuple[str, ...], float]]]]] = []

    def add(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        read: Callable[[], list[tuple[tuple[str, ...], float]]],
    ) -> None:
        self._sources = [source for source in self._sources if source[0] != name]
        self._sources.append((name, documentation, labels, read))

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # values appear only once a component has bound its source

    def collect(self) -> list[GaugeMetricFamily]:
        families = []
        for name, documentation, labels, read in self._sources:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for label_values, value in read():
                family.add_metric(list(label_values), value)
            families.append(family)
        return families


class _CountsByLabel:
    """A counter family read at scrape time from a mapping the component that counts keeps up to date
    (`label` None: one value without labels, under the key "")."""

    def __init__(
        self, name: str, documentation: str, label: str | None, read: Callable[[], Mapping[str, int]], known: Sequence[str]
    ) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._read, self._known = read, tuple(known)

    def describe(self) -> list[CounterMetricFamily]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        labels = [] if self._label is None else [self._label]
        family = CounterMetricFamily(self._name, self._documentation, labels=labels)
        counts = self._read()
        for value in (*self._known, *sorted(set(counts) - set(self._known))):
            family.add_metric([value] if labels else [], float(counts.get(value, 0)))
        yield family


@attrs.define(eq=False)
class EdgeMetrics:
    """The edge's metrics. Build with `EdgeMetrics.create(edge_id)`; render with `exposition()`."""

    registry: CollectorRegistry
    # peers and sessions
    peers_connected: Gauge
    sessions_started: Counter
    sessions_ended: Counter
    registrations_refused: Counter
    # messages on peer streams
    messages_received: Counter
    messages_sent: Counter
    # commands (backend -> peer)
    commands_received: Counter
    commands_delivered: Counter
    commands_retried: Counter
    commands_dead_lettered: Counter
    delivery_latency: Histogram
    # events (peer -> backend)
    events_produced: Counter
    events_produce_retried: Counter
    event_backpressure: Counter
    produce_latency: Histogram
    # the gRPC transport (grpc_server_*, TLS handshake failures)
    grpc: GrpcServerMetrics
    _live: _LiveCollector

    @classmethod
    def create(cls, edge_id: str = "") -> EdgeMetrics:
        registry = CollectorRegistry(auto_describe=False)
        live = _LiveCollector()
        registry.register(live)
        ProcessCollector(registry=registry)

        def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(_name(name), documentation, labels, registry=registry)

        metrics = cls(
            registry=registry,
            peers_connected=Gauge(
                _name("peers_connected"), "Peers with a registered, live session.", registry=registry
            ),
            sessions_started=counter("sessions_started", "Sessions started (successful registrations)."),
            sessions_ended=counter(
                "sessions_ended", "Sessions ended, by the reason published in `disconnected`.", ("reason",)
            ),
            registrations_refused=counter(
                "registrations_refused",
                "Streams refused before they became a session, by cause.",
                ("cause",),
            ),
            messages_received=counter(
                "messages_received", "Messages received from peers, by payload kind.", ("kind",)
            ),
            messages_sent=counter("messages_sent", "Messages written to peers, by payload kind.", ("kind",)),
            commands_received=counter(
                "commands_received", "Command records read from the command topic.", ()
            ),
            commands_delivered=counter(
                "commands_delivered", "Commands written to their peer's stream, by command type.", ("command_type",)
            ),
            commands_retried=counter(
                "commands_retried", "Command delivery retries, by why the attempt failed.", ("cause",)
            ),
            commands_dead_lettered=counter(
                "commands_dead_lettered", "Commands dead-lettered, by reason code.", ("reason",)
            ),
            delivery_latency=Histogram(
                _name("command_delivery_latency_seconds"),
                "From a command's arrival at the edge to its write to the peer's stream.",
                buckets=DELIVERY_BUCKETS,
                registry=registry,
            ),
            events_produced=counter("events_produced", "Records acknowledged by Kafka, by topic.", ("topic",)),
            events_produce_retried=counter(
                "events_produce_retried", "Records whose produce failed and was retried."
            ),
            event_backpressure=counter(
                "event_backpressure_seconds",
                "Time spent waiting for room in the full event buffer (summed over every task that queues records).",
            ),
            produce_latency=Histogram(
                _name("kafka_produce_latency_seconds"),
                "One batch of records, from hand-over to the Kafka client until every ack (acks=all).",
                buckets=PRODUCE_BUCKETS,
                registry=registry,
            ),
            grpc=GrpcServerMetrics.create(registry),
            live=live,
        )
        info = Gauge(
            _name("info"), "Always 1; labels describe this edge.", ("edge_id", "version"), registry=registry
        )
        info.labels(edge_id=edge_id, version=edge_version()).set(1)
        # Pre-create the label sets a dashboard always wants to see, so they read 0 rather than absent.
        for reason in END_REASONS:
            metrics.sessions_ended.labels(reason=reason)
        for cause in REFUSAL_CAUSES:
            metrics.registrations_refused.labels(cause=cause)
        return metrics

    # --- values read at scrape time ---------------------------------------------------------------

    def observe_event_buffer(self, depth: Callable[[], int], capacity: int) -> None:
        """Expose the event channel's depth (`depth()`, read at scrape time) and capacity."""
        self._live.add(
            _name("event_buffer_depth"), "Events queued for Kafka right now.", (), lambda: [((), float(depth()))]
        )
        self._live.add(
            _name("event_buffer_capacity"),
            "Events the buffer holds before peers stop being read (KAFKA_EVENT_BUFFER_SIZE).",
            (),
            lambda: [((), float(capacity))],
        )

    def observe_event_bytes(self, held: Callable[[], int], capacity: int) -> None:
        """Expose the bytes the event buffer holds (`held()`, read at scrape time) and its byte budget."""
        self._live.add(
            _name("event_buffer_bytes"),
            "Bytes (key + value) of events queued for Kafka or in flight to it, until acknowledged.",
            (),
            lambda: [((), float(held()))],
        )
        self._live.add(
            _name("event_buffer_bytes_capacity"),
            "Bytes the buffer holds before peers stop being read (KAFKA_EVENT_BUFFER_BYTES).",
            (),
            lambda: [((), float(capacity))],
        )

    def observe_kafka(self, producer: Callable[[], bool], consumer: Callable[[], bool | None]) -> None:
        """Expose Kafka connection state: 1 connected, 0 not (the consumer only while it is enabled)."""

        def read() -> list[tuple[tuple[str, ...], float]]:
            values: list[tuple[tuple[str, ...], float]] = [(("producer",), float(producer()))]
            consumer_connected = consumer()
            if consumer_connected is not None:
                values.append((("consumer",), float(consumer_connected)))
            return values

        self._live.add(_name("kafka_connected"), "Kafka client connection state (1 connected).", ("client",), read)

    def observe_readiness(self, ready: Callable[[], bool], accepting: Callable[[], bool]) -> None:
        self._live.add(
            _name("ready"), "1 when the edge is ready for peers (Kafka connected and accepting).", (), lambda: [((), float(ready()))]
        )
        self._live.add(
            _name("accepting_streams"),
            "1 while the gRPC server accepts new streams (0 before start and while draining).",
            (),
            lambda: [((), float(accepting()))],
        )

    def observe_grpc(self, connections_open: Callable[[], int], streams_open: Callable[[], int]) -> None:
        self._live.add(
            _name("grpc_connections_open"), "Open HTTP/2 connections on the peer port.", (), lambda: [((), float(connections_open()))]
        )
        self._live.add(
            _name("grpc_streams_open"), "Open gRPC streams (all methods) on the peer port.", (), lambda: [((), float(streams_open()))]
        )

    def observe_inbound(self, held: Callable[[], int], pauses: Callable[[], int]) -> None:
        """Expose the inbound budget (GRPC_INBOUND_BUFFER_BYTES): bytes held now, and connections paused."""
        self._live.add(
            _name("inbound_buffered_bytes"),
            "Bytes received from peers and not yet taken by their sessions (GRPC_INBOUND_BUFFER_BYTES bounds it).",
            (),
            lambda: [((), float(held()))],
        )
        self.registry.register(
            _CountsByLabel(
                _name("inbound_budget_pauses"),
                "Times a peer connection stopped being read until the inbound budget had room.",
                None,
                lambda: {"": pauses()},
                ("",),
            )
        )

    def observe_connection_refusals(self, totals: Callable[[], Mapping[str, int]], causes: Sequence[str]) -> None:
        """Expose connections refused or closed by a limit, by cause (edge.grpc.refusals), read at scrape
        time; every one of `causes` is shown, at 0 until it happens."""
        self.registry.register(
            _CountsByLabel(
                _name("connections_refused"),
                "Connections refused or closed by a connection-level limit (peer and ops ports), by cause.",
                "cause",
                totals,
                causes,
            )
        )

    # --- helpers for one-line call sites ----------------------------------------------------------

    def message_received(self, kind: str | None) -> None:
        self.messages_received.labels(kind=kind or "unknown").inc()

    def message_sent(self, kind: str | None) -> None:
        self.messages_sent.labels(kind=kind or "unknown").inc()

    def session_started(self) -> None:
        self.sessions_started.inc()
        self.peers_connected.inc()

    def session_ended(self, reason: str) -> None:
        self.sessions_ended.labels(reason=reason).inc()
        self.peers_connected.dec()

    def produced(self, records: list[Any], seconds: float) -> None:
        """A batch acknowledged by Kafka after `seconds`: latency once, records by topic."""
        if not records:
            return
        self.produce_latency.observe(seconds)
        for topic, count in collections.Counter(record.topic for record in records).items():
            self.events_produced.labels(topic=topic).inc(count)

    def registration_refused(self, code: Any) -> None:
        """A registration refused with gRPC status `code` (INVALID_ARGUMENT counts as `invalid`)."""
        name = code.name.lower()
        self.registrations_refused.labels(cause="invalid" if name == "invalid_argument" else name).inc()

    def command_delivered(self, command_type: str, seconds: float) -> None:
        self.commands_delivered.labels(command_type=command_type).inc()
        self.delivery_latency.observe(seconds)

    def exposition(self, *, openmetrics_format: bool = False) -> bytes:
        """Every metric, without `_created` series: Prometheus text format 0.0.4, or OpenMetrics 1.0.0
        text (`/metrics` chooses by the scraper's Accept header, edge.ops.http)."""
        view = _WithoutCreated(self.registry)
        if openmetrics_format:
            return openmetrics.generate_latest(view)  # type: ignore[no-untyped-call,no-any-return]
        return generate_latest(view)

