"""TLS material for the transport tests: a trustme CA, a server certificate for localhost/127.0.0.1, a
client certificate, and the server context built by the product's own `server_ssl_context`."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import pytest
import trustme

from edge.grpc.tls import server_ssl_context


@attrs.frozen
class TlsFiles:
    ca_pem: bytes
    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    client_cert_pem: bytes
    client_key_pem: bytes
    client_cert_der: bytes


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("peer-7.example", common_name="peer-7")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert_path = directory / "server.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    key_path = directory / "server.key"
    server.private_key_pem.write_to_path(str(key_path))
    client_cert_pem = client.cert_chain_pems[0].bytes()
    return TlsFiles(
        ca_pem=ca.cert_pem.bytes(),
        ca_path=ca_path,
        server_cert_path=cert_path,
        server_key_path=key_path,
        client_cert_pem=client_cert_pem,
        client_key_pem=client.private_key_pem.bytes(),
        client_cert_der=ssl.PEM_cert_to_DER_cert(client_cert_pem.decode()),
    )


@pytest.fixture
def server_tls(tls_files: TlsFiles) -> ssl.SSLContext:
    """Server context: TLS 1.2+, ALPN h2, no client certificate."""
    return server_ssl_context(tls_files.server_cert_path, tls_files.server_key_path)


@pytest.fixture
def server_mtls(tls_files: TlsFiles) -> ssl.SSLContext:
    """Server context that requires a client certificate signed by the test CA."""
    return server_ssl_context(tls_files.server_cert_path, tls_files.server_key_path, tls_files.ca_path)
