"""`EdgeRuntime`: what one running edge shows its operators, shared by the components that feed it.

`serve` makes one per call (or takes the caller's) and reports it in `edge.Started`:
the metrics registry, the readiness state (with the Kafka bridge's `KafkaState` inside), the gRPC
transport's live counters, the connection refusals of both ports (one tally, summarized in the log by
`edge.grpc.refusals.serve_refusal_summaries`), and the ports actually bound (useful with port 0).
"""

from __future__ import annotations

import attrs

from edge.grpc import GrpcServerStats, Handler
from edge.grpc.refusals import CAUSES, RefusalTally
from edge.ops.health import EdgeHealth, HealthService
from edge.ops.metrics import EdgeMetrics
from edge.ops.reflection import ReflectionService
from edge.proto import ops as ops_pb


@attrs.define(eq=False)
class EdgeRuntime:
    metrics: EdgeMetrics
    health: EdgeHealth = attrs.field(factory=EdgeHealth)
    grpc_stats: GrpcServerStats = attrs.field(factory=GrpcServerStats)
    #: Connections refused or closed by a limit, by cause, on the peer port and the ops HTTP port.
    refusals: RefusalTally = attrs.field(factory=RefusalTally)
    #: Bound ports, filled in as the servers start (None until then, or when turned off).
    grpc_port: int | None = None
    http_port: int | None = None

    @classmethod
    def create(cls, edge_id: str = "") -> EdgeRuntime:
        refusals = RefusalTally()
        runtime = cls(metrics=EdgeMetrics.create(edge_id), grpc_stats=GrpcServerStats(refusals=refusals), refusals=refusals)
        runtime.metrics.observe_connection_refusals(lambda: refusals.totals, CAUSES)
        health = runtime.health  # read through it at scrape time: `serve` may give it another KafkaState
        runtime.metrics.observe_kafka(
            lambda: health.kafka.producer_connected,
            lambda: health.kafka.consumer_connected if health.kafka.consumer_enabled else None,
        )
        runtime.metrics.observe_readiness(lambda: runtime.health.ready, lambda: runtime.health.accepting)
        stats = runtime.grpc_stats
        runtime.metrics.observe_grpc(lambda: stats.connections_open, lambda: stats.streams_open)
        runtime.metrics.observe_inbound(lambda: stats.inbound_buffered_bytes, lambda: stats.inbound_pauses)
        return runtime

    def ops_routes(self) -> dict[str, Handler]:
        """gRPC health and reflection handlers, served on the peer port next to `Connect`."""
        health = HealthService(self.health)
        reflection = ReflectionService()
        return {
            ops_pb.HEALTH_CHECK_PATH: health.check,
            ops_pb.HEALTH_LIST_PATH: health.list,
            ops_pb.HEALTH_WATCH_PATH: health.watch,
            ops_pb.REFLECTION_V1ALPHA_PATH: reflection.v1alpha,
            ops_pb.REFLECTION_V1_PATH: reflection.v1,
        }
