"""Shared fixtures. Test rules for this suite:

- Anything timed (heartbeats, timeouts, backoff, shutdown deadlines) runs under `autojump_clock` and
  takes no wall-clock time; no test sleeps real seconds for timing.
- Anything that claims Kafka behaviour runs against a real broker (`kafka_bootstrap`) on the real
  clock; anything that claims gRPC behaviour uses real sockets, real TLS and a real grpcio client.
- Each test uses fresh names (edge id, topics) so tests never read each other's records.

The fixtures and what tests run the edge with live in the `testing` package: Kafka brokers
(`testing.kafka.fixtures`), the `tls_files` certificates (`testing.tls`), `running_edge`
(`testing.harness`), `GrpcioPeer` (`testing.grpcio_peer`) and `edge_settings` (`testing.settings`).
"""

pytest_plugins = ["testing.kafka.fixtures", "testing.tls"]
