"""TLS material for tests: a trustme CA, a server certificate for localhost and the loopback addresses,
and a client certificate, written where the edge and the transport read them."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import pytest
import trustme


@attrs.frozen
class TlsFiles:
    ca: trustme.CA
    ca_pem: bytes
    ca_path: Path
    #: The server certificate (with its chain) and key, for localhost, 127.0.0.1 and ::1.
    cert_path: Path
    key_path: Path
    #: A client certificate signed by `ca` (CN peer-7, SAN peer-7.example), for mutual TLS.
    client_cert_pem: bytes
    client_key_pem: bytes
    client_cert_der: bytes


def write_tls_files(directory: Path) -> TlsFiles:
    """A fresh CA and its certificates, written to `directory`."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("peer-7.example", common_name="peer-7")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert_path = directory / "server.crt"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    key_path = directory / "server.key"
    server.private_key_pem.write_to_path(str(key_path))
    client_cert_pem = client.cert_chain_pems[0].bytes()
    return TlsFiles(
        ca=ca,
        ca_pem=ca.cert_pem.bytes(),
        ca_path=ca_path,
        cert_path=cert_path,
        key_path=key_path,
        client_cert_pem=client_cert_pem,
        client_key_pem=client.private_key_pem.bytes(),
        client_cert_der=ssl.PEM_cert_to_DER_cert(client_cert_pem.decode()),
    )


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """One CA and its certificates for the whole session."""
    return write_tls_files(tmp_path_factory.mktemp("tls"))
