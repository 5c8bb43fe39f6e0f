"""What operators see of a running edge: readiness, health, metrics and reflection. No peer or Kafka
logic: the peer side and the Kafka bridge write into it, the endpoints read it.

    runtime.py     EdgeRuntime: one edge's metrics, readiness, transport counters and bound ports
                   (made by `edge.serve`, which reports it in `edge.Started`)
    readiness.py   KafkaState: whether the Kafka bridge can do its job right now (edge.kafka writes it)
    health.py      EdgeHealth: ready or not, one answer; the gRPC health service
    metrics.py     EdgeMetrics: every Prometheus metric, in a registry of its own (process metrics
                   included), rendered without `_created` series
    grpc_metrics.py  GrpcServerMetrics: grpc_server_* in the grpc-ecosystem shape and TLS handshake
                   failures; the transport reports to it (edge.grpc.ServerMetrics)
    gc_policy.py   the collector thresholds `python -m edge run` sets (docs/design.md#collector-thresholds)
    http.py        serve_ops_http: /healthz, /readyz and /metrics (OpenMetrics or text 0.0.4, by Accept)
                   on their own address; stops last
    reflection.py  gRPC server reflection, so `grpcurl list/describe` work

Imports: edge.grpc (the counters and the handler type), edge.config, edge.proto.
"""
