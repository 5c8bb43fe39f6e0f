"""Server TLS contexts for the transport tests, built by the product's own `server_ssl_context` from
the session's `tls_files` (testing/tls.py)."""

from __future__ import annotations

import ssl

import pytest

from edge.grpc.tls import server_ssl_context
from testing.tls import TlsFiles


@pytest.fixture
def server_tls(tls_files: TlsFiles) -> ssl.SSLContext:
    """Server context: TLS 1.2+, ALPN h2, no client certificate."""
    return server_ssl_context(tls_files.cert_path, tls_files.key_path)


@pytest.fixture
def server_mtls(tls_files: TlsFiles) -> ssl.SSLContext:
    """Server context that requires a client certificate signed by the test CA."""
    return server_ssl_context(tls_files.cert_path, tls_files.key_path, tls_files.ca_path)
