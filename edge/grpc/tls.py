"""The server TLS context for the peer port (TLS 1.2+, ALPN h2, optional client certificates), and why
a handshake failed."""

from __future__ import annotations

import os
import ssl
from typing import Final

#: RFC 9113 9.2.2: on TLS 1.2, HTTP/2 needs ephemeral key exchange and an AEAD cipher.
#: (TLS 1.3 suites are not affected by set_ciphers and are all acceptable.)
H2_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


#: Causes of a failed handshake, as counted (`metrics.ServerMetrics.handshake_failed`): not done within
#: `tls_handshake_timeout`; the client closed; the connection broke; TLS refused it (an untrusted
#: certificate, no common version or cipher, not TLS at all); the client did not choose HTTP/2.
HANDSHAKE_TIMEOUT: Final = "timeout"
HANDSHAKE_EOF: Final = "eof"
HANDSHAKE_RESET: Final = "reset"
HANDSHAKE_TLS_ERROR: Final = "tls_error"
HANDSHAKE_ALPN: Final = "alpn"


def handshake_failure_cause(error: BaseException) -> str:
    """The cause of the `trio.BrokenResourceError` a server-side `do_handshake` raised: `eof`,
    `tls_error` or `reset`, read from the error it was raised from."""
    cause = error.__cause__
    # Some OpenSSL builds report the EOF as a plain SSLError (trio's `_is_eof` looks at it the same way).
    if isinstance(cause, ssl.SSLEOFError) or "UNEXPECTED_EOF_WHILE_READING" in str(getattr(cause, "strerror", "")):
        return HANDSHAKE_EOF
    if isinstance(cause, ssl.SSLError):  # CertificateError is one
        return HANDSHAKE_TLS_ERROR
    return HANDSHAKE_RESET


def server_ssl_context(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    client_ca_path: str | os.PathLike[str] | None = None,
    *,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """Server context for gRPC: TLS 1.2 or newer, ALPN "h2", no TLS compression.

    With `client_ca_path`, clients must present a certificate signed by that CA (mutual TLS), or, with
    `require_client_cert=False`, may present one (verified if presented). Raises OSError/ssl.SSLError
    for unreadable or mismatched files.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_ciphers(H2_TLS12_CIPHERS)
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(cert_path, key_path)
    if client_ca_path is not None:
        context.load_verify_locations(cafile=client_ca_path)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context
