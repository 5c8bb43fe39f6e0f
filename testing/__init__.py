"""What the tests and the benchmark run the edge with; not part of the shipped package.

    kafka/          real Kafka brokers (`python -m testing.kafka.broker fetch|run`), a 3-node cluster
                    (`python -m testing.kafka.cluster`), a small aiokafka client for reading and
                    writing records, and their pytest fixtures
    harness.py      `running_edge`: `edge.serve` in a cancel scope of its own, with the Kafka bridge
                    or an in-memory `MemoryBridge` that keeps what the edge would publish
    grpcio_peer.py  `GrpcioPeer`: one `Connect` stream driven by the real grpcio client
    settings.py     `edge_settings`: settings for one test's edge (TLS, its own topics and group)
    tls.py          `TlsFiles` and the `tls_files` fixture: a trustme CA and the certificates on disk
    relay.py        a TCP relay that can refuse connections or connect from another loopback address
    process.py      `EdgeProcess`: `python -m edge` as a child process, its JSON log read line by line

pytest loads the fixtures through `tests/conftest.py`; `bench/` imports the brokers from here.
"""
