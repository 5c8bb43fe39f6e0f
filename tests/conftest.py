"""Shared fixtures. Test rules for this suite:

- Anything timed (heartbeats, timeouts, backoff, shutdown deadlines) runs under `autojump_clock` and
  takes no wall-clock time; no test sleeps real seconds for timing.
- Anything that claims Kafka behaviour runs against a real broker (`kafka_bootstrap`) on the real
  clock; anything that claims gRPC behaviour uses real sockets, real TLS and a real grpcio client.
- Each test uses fresh names (edge id, topics) so tests never read each other's records.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trustme

pytest_plugins = ["tests.kafka.fixtures"]


@attrs.frozen
class TlsFiles:
    ca_pem: bytes
    cert_path: Path
    key_path: Path
    ca: trustme.CA


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A trustme CA and a server certificate for localhost, written where the edge reads them."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path = directory / "server.crt"
    key_path = directory / "server.key"
    server.private_key_pem.write_to_path(str(key_path))
    with open(cert_path, "wb") as handle:
        for blob in server.cert_chain_pems:
            handle.write(blob.bytes())
    return TlsFiles(ca_pem=ca.cert_pem.bytes(), cert_path=cert_path, key_path=key_path, ca=ca)
