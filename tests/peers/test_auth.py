"""Peer identity on the wire: real TLS sockets, real grpcio peers, trustme CAs and client certificates,
tokens signed with real keys, and the edge's own start-up code reading the key files.

Each test proves one row of the policy (docs/security.md): who is admitted, which status a refused peer
gets (with a registration response saying why), that a refused stream publishes nothing and disturbs no
connected peer, and that no token or key material reaches the logs.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import attrs
import grpc
import pytest
import structlog
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.certs import issue_peer_certificate, write_dev_certificates
from edge.peers.tokens import mint_token
from edge.proto import pb
from testing.grpcio_peer import GrpcioPeer
from testing.harness import MemoryBridge, running_edge
from testing.settings import tls_settings
from tests.peers.support import assert_no_secrets

NOW = datetime.datetime.now(datetime.timezone.utc)


@attrs.frozen
class PeerCredentials:
    peer_ca: trustme.CA
    client_ca_path: Path  # peer CA + the development CA, one bundle
    dev_dir: Path
    hmac_secret: bytes
    hmac_path: Path
    ed25519_key: Ed25519PrivateKey
    ed25519_public_path: Path


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> PeerCredentials:
    directory = tmp_path_factory.mktemp("peer-credentials")
    peer_ca = trustme.CA()
    dev_dir = directory / "dev"
    write_dev_certificates(dev_dir)
    client_ca_path = directory / "peer-cas.pem"
    client_ca_path.write_bytes(peer_ca.cert_pem.bytes() + (dev_dir / "ca.crt").read_bytes())
    secret = os.urandom(24).hex().encode()  # 48 bytes of text
    hmac_path = directory / "peer-token.secret"
    hmac_path.write_bytes(b"\n" + secret + b"\n")
    hmac_path.chmod(0o600)
    key = Ed25519PrivateKey.generate()
    public_path = directory / "token.pub"
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return PeerCredentials(peer_ca, client_ca_path, dev_dir, secret, hmac_path, key, public_path)



def client_cert(leaf: trustme.LeafCert) -> tuple[bytes, bytes]:
    return leaf.private_key_pem.bytes(), b"".join(blob.bytes() for blob in leaf.cert_chain_pems)


async def heartbeat_round_trip(peer: GrpcioPeer, edge, peer_id: str, request_id: str) -> None:
    """The peer is still connected and served: a response it sends now reaches the event channel."""
    peer.send(pb.PeerMessage(request_id=request_id, file_hash_response=pb.FileHashResponse(catalog_uuid="c")))
    await edge.bridge.wait_for(lambda: any(r.value.get("request_id") == request_id for r in edge.bridge.records()))
    assert edge.registry.lookup(peer_id) is not None


async def refused(peer: GrpcioPeer, peer_id: str) -> tuple[grpc.StatusCode, str, pb.PeerRegistrationResponse]:
    peer.register(peer_id)
    reply = await peer.receive_kind("registration_response")
    code, details = await peer.wait_status()
    return code, details, reply.registration_response


# ---------------------------------------------------------------------------------------------- mTLS


async def test_mtls_admits_only_the_id_the_certificate_names(tls_files, creds):
    """Right certificate and id: admitted. A valid certificate for another id: PERMISSION_DENIED (and
    the log names both ids). No certificate: UNAUTHENTICATED. A certificate from another CA, or a
    server-only certificate from the right CA: the TLS handshake fails. A CN-only certificate from
    `python -m edge certs --peer-id` proves its CN. The connected peer sees none of it, and refused
    streams publish nothing."""
    settings = tls_settings(tls_files, peer_auth_mode="mtls", grpc_client_ca_path=creds.client_ca_path)
    root = tls_files.ca_pem
    rogue_ca = trustme.CA()
    peers: list[GrpcioPeer] = []

    def peer(**kwargs) -> GrpcioPeer:
        peers.append(GrpcioPeer(edge.port, root_certificates=root, own_connection=True, **kwargs))
        return peers[-1]

    good_leaf = creds.peer_ca.issue_cert("peer-a")
    with structlog.testing.capture_logs() as logs:
        async with running_edge(settings, bridge=MemoryBridge()) as edge:
            try:
                good = peer(client_certificate=client_cert(good_leaf))
                good.register("peer-a")
                assert (await good.receive_kind("registration_response")).registration_response.success
                session = edge.registry.lookup("peer-a")

                other = peer(client_certificate=client_cert(creds.peer_ca.issue_cert("peer-b")))
                code, details, response = await refused(other, "peer-a")
                assert code == grpc.StatusCode.PERMISSION_DENIED
                assert details == "client certificate does not prove peer id 'peer-a'"
                assert not response.success and response.error_message == details

                code, details, response = await refused(peer(), "peer-a")
                assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
                assert not response.success

                rogue = peer(client_certificate=client_cert(rogue_ca.issue_cert("peer-a")))
                rogue.register("peer-a")
                assert await rogue.receive() is None
                assert rogue.code() == grpc.StatusCode.UNAVAILABLE

                # The edge's own server certificate (same CA, but serverAuth only) is no client certificate.
                server_as_client = peer(
                    client_certificate=((creds.dev_dir / "server.key").read_bytes(), (creds.dev_dir / "server.crt").read_bytes())
                )
                server_as_client.register("localhost")
                assert await server_as_client.receive() is None
                assert server_as_client.code() == grpc.StatusCode.UNAVAILABLE

                # The development CA's certificate (CN only, from `python -m edge certs --peer-id`).
                dev_cert, dev_key = issue_peer_certificate(creds.dev_dir, "peer-dev")
                dev = peer(client_certificate=(dev_key.read_bytes(), dev_cert.read_bytes()))
                dev.register("peer-dev")
                assert (await dev.receive_kind("registration_response")).registration_response.success

                await heartbeat_round_trip(good, edge, "peer-a", "still-here")
                assert edge.registry.lookup("peer-a") is session
            finally:
                for each in peers:
                    each.close()
    connected = [r.key for r in edge.bridge.records(event_type="connected")]
    assert connected == ["peer-a", "peer-dev"]
    # Refused streams publish nothing. The admitted peers hang up as the edge stops: either may come first.
    disconnected = edge.bridge.records(event_type="disconnected")
    assert {r.key for r in disconnected} <= {"peer-a", "peer-dev"}
    assert {r.value["reason"] for r in disconnected} <= {"shutdown", "stream_closed"}
    [denied] = [e for e in logs if e["event"] == "peer_auth_refused" and e["code"] == "PERMISSION_DENIED"]
    assert denied["claimed_peer_id"] == "peer-a" and denied["proven_peer_ids"] == ["peer-b"]
    assert denied["log_level"] == "warning" and denied["method"] == "certificate"
    [missing] = [e for e in logs if e["event"] == "peer_auth_refused" and e["code"] == "UNAUTHENTICATED"]
    assert missing["reason"] == "no_credentials" and missing["proven_peer_ids"] == []
    assert len([e for e in logs if e["event"] == "grpc_tls_handshake_failed"]) == 2
    assert (edge.refused("permission_denied"), edge.refused("unauthenticated")) == (1, 1)
    handshake_failures = edge.runtime.metrics.registry.get_sample_value(
        "giggityflix_edge_grpc_tls_handshake_failures_total", {"cause": "tls_error"}
    )
    assert handshake_failures == 2  # the two certificates the TLS layer refused
    private_keys = [good_leaf.private_key_pem.bytes(), (creds.dev_dir / "server.key").read_bytes(), tls_files.key_path.read_bytes()]
    assert_no_secrets(logs, [line for key in private_keys for line in key.decode().splitlines() if "-----" not in line])


# --------------------------------------------------------------------------------------------- tokens


def hs256(peer_id: str, secret: bytes, **kwargs) -> str:
    return mint_token(peer_id, secret, now=kwargs.pop("now", NOW), ttl_sec=kwargs.pop("ttl_sec", 600), **kwargs)


def flip_unused_bit(token: str) -> str:
    """`token` with an unused bit of its signature's last character set: the same signature bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]


TOKEN_CASES = {
    # name: (token for claimed id "peer-t" or None, expected code, expected details (None: admitted))
    "valid_hs256": (lambda c: hs256("peer-t", c.hmac_secret), None, None),
    "valid_eddsa": (lambda c: hs256("peer-t", c.ed25519_key), None, None),
    "valid_ed25519_alg": (lambda c: hs256("peer-t", c.ed25519_key, extra_header={"alg": "Ed25519"}), None, None),
    "unexpected_audience": (
        lambda c: hs256("peer-t", c.hmac_secret, audience="another-service"),
        grpc.StatusCode.UNAUTHENTICATED,
        "bearer token names an audience (aud) and this edge has none",
    ),
    "non_canonical_signature": (
        lambda c: flip_unused_bit(hs256("peer-t", c.hmac_secret)),
        grpc.StatusCode.UNAUTHENTICATED,
        "bearer token is not canonical base64url",
    ),
    "expired": (
        lambda c: hs256("peer-t", c.hmac_secret, now=NOW - datetime.timedelta(hours=2), ttl_sec=3600),
        grpc.StatusCode.UNAUTHENTICATED,
        "bearer token has expired",
    ),
    "wrong_signature": (
        lambda c: hs256("peer-t", b"another secret that is long enough to sign"),
        grpc.StatusCode.UNAUTHENTICATED,
        "bearer token signature is invalid",
    ),
    "wrong_subject": (
        lambda c: hs256("peer-other", c.hmac_secret),
        grpc.StatusCode.PERMISSION_DENIED,
        "bearer token does not prove peer id 'peer-t'",
    ),
    "missing": (
        lambda c: None,
        grpc.StatusCode.UNAUTHENTICATED,
        "a bearer token is required (metadata authorization: Bearer <token>)",
    ),
    "not_bearer": (
        lambda c: "Basic cGVlcjpwYXNz",
        grpc.StatusCode.UNAUTHENTICATED,
        "authorization metadata must be 'Bearer <token>'",
    ),
}


@pytest.mark.parametrize("case", sorted(TOKEN_CASES))
async def test_token_cases(tls_files, creds, case):
    """Each token case gets its status and a registration response saying why; an admitted peer is
    served; a connected peer is undisturbed; no token or key material is logged."""
    make, expected_code, expected_details = TOKEN_CASES[case]
    token = make(creds)
    settings = tls_settings(
        tls_files,
        peer_auth_mode="token",
        peer_token_hmac_secret_path=creds.hmac_path,
        peer_token_ed25519_public_key_path=creds.ed25519_public_path,
    )
    if token is None:
        metadata = ()
    elif token.startswith("Basic "):
        metadata = (("authorization", token),)
    else:
        metadata = (("authorization", f"Bearer {token}"),)
    root = tls_files.ca_pem
    with structlog.testing.capture_logs() as logs:
        async with running_edge(settings, bridge=MemoryBridge()) as edge:
            bystander = GrpcioPeer(
                edge.port, root_certificates=root, metadata=[("authorization", f"Bearer {hs256('peer-b', creds.hmac_secret)}")]
            )
            peer = GrpcioPeer(edge.port, root_certificates=root, metadata=metadata, own_connection=True)
            try:
                bystander.register("peer-b")
                assert (await bystander.receive_kind("registration_response")).registration_response.success
                if expected_code is None:
                    peer.register("peer-t")
                    reply = await peer.receive_kind("registration_response")
                    assert reply.registration_response.success
                    await heartbeat_round_trip(peer, edge, "peer-t", "admitted")
                else:
                    code, details, response = await refused(peer, "peer-t")
                    assert (code, details) == (expected_code, expected_details)
                    assert not response.success and response.error_message == expected_details
                    assert edge.registry.lookup("peer-t") is None
                await heartbeat_round_trip(bystander, edge, "peer-b", "bystander")
            finally:
                peer.close()
                bystander.close()
    connected = [r.key for r in edge.bridge.records(event_type="connected")]
    assert connected == (["peer-b", "peer-t"] if expected_code is None else ["peer-b"])
    refusals = [e for e in logs if e["event"] == "peer_auth_refused"]
    if expected_code is None:
        assert refusals == []
    else:
        [refusal] = refusals
        assert refusal["code"] == expected_code.name
        # Credentials that prove nothing are refused on the stream's HEADERS, before any peer id is read.
        unproven = expected_code is grpc.StatusCode.UNAUTHENTICATED
        assert refusal["claimed_peer_id"] == (None if unproven else "peer-t")
        if case == "wrong_subject":
            assert refusal["proven_peer_ids"] == ["peer-other"] and refusal["method"] == "token"
    secrets = [creds.hmac_secret, hs256("peer-b", creds.hmac_secret).split(".")[2]]
    if token is not None:
        secrets += [token, token.split(".")[-1]]
    assert_no_secrets(logs, secrets)


async def test_mtls_or_token_accepts_either_proof(tls_files, creds):
    """PEER_AUTH_MODE=mtls_or_token: a certificate alone, or a token alone, proves the id; neither is
    UNAUTHENTICATED; a certificate for another id with no token is PERMISSION_DENIED."""
    settings = tls_settings(
        tls_files,
        peer_auth_mode="mtls_or_token",
        grpc_client_ca_path=creds.client_ca_path,
        peer_token_hmac_secret_path=creds.hmac_path,
    )
    root = tls_files.ca_pem
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        by_cert = GrpcioPeer(
            edge.port, root_certificates=root, own_connection=True,
            client_certificate=client_cert(creds.peer_ca.issue_cert("peer-c")),
        )
        by_token = GrpcioPeer(
            edge.port, root_certificates=root, own_connection=True,
            metadata=[("authorization", f"Bearer {hs256('peer-d', creds.hmac_secret)}")],
        )
        by_nothing = GrpcioPeer(edge.port, root_certificates=root, own_connection=True)
        by_other_cert = GrpcioPeer(
            edge.port, root_certificates=root, own_connection=True,
            client_certificate=client_cert(creds.peer_ca.issue_cert("peer-x")),
        )
        try:
            for peer, peer_id in ((by_cert, "peer-c"), (by_token, "peer-d")):
                peer.register(peer_id)
                assert (await peer.receive_kind("registration_response")).registration_response.success
            code, details, _ = await refused(by_nothing, "peer-e")
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert details.startswith("a client certificate or a bearer token")
            code, _, _ = await refused(by_other_cert, "peer-c")
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert edge.registry.lookup("peer-c") is not None
        finally:
            for peer in (by_cert, by_token, by_nothing, by_other_cert):
                peer.close()
