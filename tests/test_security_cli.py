"""Identity settings and tools as an operator meets them: `python -m edge token`, `python -m edge certs
--peer-id`, start-up refusals (exit code 2, one line naming the variable) and the start-up warning when
peers are not authenticated."""

from __future__ import annotations

import datetime
import stat

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.peers.tokens import TokenKeys, verify_token
from testing.process import EdgeProcess
from tests.test_cli import run_edge

SECRET = b"0123456789abcdef0123456789abcdef-dev"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def test_token_signs_with_the_configured_secret(tmp_path):
    secret = tmp_path / "peer-token.secret"
    secret.write_bytes(SECRET + b"\n")
    result = run_edge(
        "token", "--peer-id", "peer-9", "--ttl-sec", "120",
        env={"PEER_TOKEN_HMAC_SECRET_PATH": str(secret), "PEER_TOKEN_AUDIENCE": "edge-eu"},
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = verify_token(token, TokenKeys(hmac_secrets=(SECRET,)), now=now(), leeway_sec=0, audience="edge-eu")
    assert claims.subject == "peer-9" and claims.algorithm == "HS256"
    assert 100 < (claims.expires_at - now()).total_seconds() <= 121


def test_token_signs_with_an_ed25519_key(tmp_path):
    key = Ed25519PrivateKey.generate()
    key_path = tmp_path / "token.key"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    result = run_edge("token", "--peer-id", "peer-9", "--ed25519-key", str(key_path))
    assert result.returncode == 0, result.stderr
    claims = verify_token(
        result.stdout.strip(), TokenKeys(ed25519_public_keys=(key.public_key(),)), now=now(), leeway_sec=0
    )
    assert claims.subject == "peer-9" and claims.algorithm == "EdDSA"


def test_token_refusals_exit_2(tmp_path):
    missing = run_edge("token", "--peer-id", "peer-9", "--secret", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot read signing key" in missing.stderr
    bad_id = run_edge("token", "--peer-id", "peer 9", "--secret", str(tmp_path / "nope"))
    assert bad_id.returncode == 2 and "--peer-id" in bad_id.stderr


def test_certs_writes_a_token_secret_and_issues_peer_certificates(tmp_path):
    assert run_edge("certs", "--dir", str(tmp_path)).returncode == 0
    secret = tmp_path / "peer-token.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes().strip()) >= 32
    result = run_edge("certs", "--dir", str(tmp_path), "--peer-id", "peer:7@home")
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "peer-peer:7@home.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "peer:7@home"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert stat.S_IMODE((tmp_path / "peer-peer:7@home.key").stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert run_edge("certs", "--dir", str(tmp_path / "empty"), "--peer-id", "p").returncode == 2


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"GRPC_USE_TLS": "false"}, "PEER_TOKEN_HMAC_SECRET_PATH"),
        ({"GRPC_USE_TLS": "false", "PEER_AUTH_MODE": "mtls"}, "PEER_AUTH_MODE"),
        ({"PEER_AUTH_MODE": "mtls"}, "GRPC_CLIENT_CA_PATH"),
        ({"GRPC_USE_TLS": "false", "PEER_TOKEN_HMAC_SECRET_PATH": "/nonexistent/secret"}, "PEER_TOKEN_HMAC_SECRET_PATH"),
    ],
)
def test_start_up_refusals_name_the_variable(tls_files, env, variable):
    """Defaults are secure: with no token key the edge does not start (exit 2, one line)."""
    result = run_edge(
        "run", env={"GRPC_CERT_PATH": str(tls_files.cert_path), "GRPC_KEY_PATH": str(tls_files.key_path), **env}
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"edge: configuration error: {variable}: expected ")


async def test_unauthenticated_peers_are_announced_at_start_up(tmp_path):
    """PEER_AUTH_MODE=none is allowed, and the edge says loudly what it means, before anything runs."""
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(
            nursery,
            "run",
            env={
                "PEER_AUTH_MODE": "none",
                "GRPC_USE_TLS": "false",
                "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
                "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            },
            cwd=tmp_path,
        )
        try:
            warning = await edge.wait_event("peer_auth_disabled", timeout=30)
            assert warning["level"] == "warning" and "any peer id" in warning["detail"]
            configured = await edge.wait_event("peer_auth_configured", timeout=30)
            assert configured["mode"] == "none"
        finally:
            edge.kill()
            await edge.wait_exit(timeout=30)
        nursery.cancel_scope.cancel()
