"""Development credentials: a private CA, a server certificate for this machine, peer client
certificates, and a secret for signing peer tokens.

`python -m edge certs` writes the CA, the server certificate and the token secret into `certs/`;
`python -m edge run --dev-certs` does so only for what is missing. `python -m edge certs --peer-id X`
issues a client certificate for peer X from that CA, and `python -m edge token --peer-id X` signs a token
for it. They are for development and tests on one machine; see `certs/README.md` and docs/security.md
for real ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import socket
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
#: File name of the development HS256 secret, next to the development certificates.
DEV_TOKEN_SECRET_NAME = "peer-token.secret"


@attrs.frozen
class DevCertificates:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write_private(
        path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_dev_token_secret(path: Path) -> bool:
    """Write a fresh random HS256 secret (64 URL-safe characters, mode 0600) unless `path` exists.
    Returns whether it wrote one."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, secrets.token_urlsafe(48).encode("ascii") + b"\n")
    return True


def issue_peer_certificate(directory: Path, peer_id: str, *, validity: datetime.timedelta = VALIDITY) -> tuple[Path, Path]:
    """A client certificate for `peer_id` signed by the development CA in `directory` (ca.crt, ca.key).

    The peer id is the certificate's common name and it has no DNS/URI subjectAltName, so it proves
    exactly that id (docs/security.md). Written as `peer-<id>.crt` and `peer-<id>.key` (0600).
    Raises FileNotFoundError when the CA is missing.
    """
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, peer_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path = directory / f"peer-{peer_id}.crt"
    key_path = directory / f"peer-{peer_id}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def write_dev_certificates(directory: Path, *, hostnames: tuple[str, ...] = ()) -> DevCertificates:
    """Create a CA and a server certificate (localhost, 127.0.0.1, ::1, this host's name)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Giggityflix Edge development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names = {"localhost", socket.gethostname(), *hostnames}
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(names)]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    server_key = _key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    result = DevCertificates(
        ca_cert=directory / "ca.crt", server_cert=directory / "server.crt", server_key=directory / "server.key"
    )
    _write_key(directory / "ca.key", ca_key)
    _write_cert(result.ca_cert, ca_cert)
    _write_key(result.server_key, server_key)
    _write_cert(result.server_cert, server_cert)
    return result
