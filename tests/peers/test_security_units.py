"""Pure logic of peer identity and abuse limits, no event loop: the JWT verifier, the admission policy,
the token buckets and throttles (fed explicit times), the arrival count of the message parser, and the
start-up checks of the key files (ConfigError naming the variable, warnings for open permissions, for
unauthenticated peers, and never a secret in a message or a log line)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import ssl

import pytest
import structlog
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import PEER_AUTH_MODES, ConfigError, settings_for_tests
from edge.grpc import StatusCode
from edge.grpc.framing import MessageParser
from edge.peers.admission import apply_peer_tls, load_admission
from edge.peers.auth import (
    AuthMode,
    Admitted,
    Presented,
    Refused,
    TokenPolicy,
    bearer_token,
    certificate_identities,
    decide,
)
from edge.grpc.connection_limits import address_key
from edge.peers.limits import AddressThrottle, MessageMeter, TokenBucket, UnregisteredStreams
from edge.peers.tokens import (
    KeyFileError,
    TokenError,
    TokenKeys,
    mint_token,
    parse_ed25519_public_keys,
    parse_hmac_secrets,
    verify_token,
)
from tests.peers.support import assert_no_secrets

NOW = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
SECRET = b"s" * 40
OTHER_SECRET = b"o" * 40
ED_KEY = Ed25519PrivateKey.generate()
KEYS = TokenKeys(hmac_secrets=(SECRET,), ed25519_public_keys=(ED_KEY.public_key(),))
POLICY = TokenPolicy(keys=KEYS, leeway_sec=30)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict | str, claims: dict | str, secret: bytes = SECRET) -> str:
    """A token built by hand (for headers and claims `mint_token` would never write)."""
    head = b64(header.encode() if isinstance(header, str) else json.dumps(header).encode())
    body = b64(claims.encode() if isinstance(claims, str) else json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def verify(token: str, keys: TokenKeys = KEYS, **kwargs) -> str:
    return verify_token(token, keys, now=kwargs.pop("now", NOW), leeway_sec=kwargs.pop("leeway_sec", 30), **kwargs).subject


def reason(token: str, keys: TokenKeys = KEYS, **kwargs) -> str:
    with pytest.raises(TokenError) as caught:
        verify(token, keys, **kwargs)
    assert len(token) < 8 or token not in caught.value.message
    return caught.value.reason


GOOD_CLAIMS = {"sub": "peer-1", "exp": int(NOW.timestamp()) + 600}


# ---------------------------------------------------------------------------------------------- tokens


def test_minted_tokens_verify_with_either_algorithm():
    assert verify(mint_token("peer-1", SECRET, now=NOW, ttl_sec=60)) == "peer-1"
    assert verify(mint_token("peer-1", ED_KEY, now=NOW, ttl_sec=60)) == "peer-1"


def test_alg_none_and_unconfigured_algorithms_are_refused():
    unsigned = f"{b64(json.dumps({'alg': 'none'}).encode())}.{b64(json.dumps(GOOD_CLAIMS).encode())}.AAAA"
    assert reason(unsigned) == "token_algorithm"
    assert reason(hand_made({"alg": "HS512"}, GOOD_CLAIMS)) == "token_algorithm"
    assert reason(hand_made({"alg": "RS256"}, GOOD_CLAIMS)) == "token_algorithm"
    # An EdDSA-only edge refuses HS256, even signed with the bytes of its public key (algorithm confusion).
    ed_only = TokenKeys(ed25519_public_keys=(ED_KEY.public_key(),))
    public_bytes = ED_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert reason(hand_made({"alg": "HS256"}, GOOD_CLAIMS, secret=public_bytes), ed_only) == "token_algorithm"
    assert reason(mint_token("peer-1", SECRET, now=NOW, ttl_sec=60), ed_only) == "token_algorithm"


def test_signature_is_checked_before_claims():
    assert reason(mint_token("peer-1", OTHER_SECRET, now=NOW, ttl_sec=60)) == "token_signature"
    expired_forgery = mint_token("peer-1", OTHER_SECRET, now=NOW - datetime.timedelta(days=9), ttl_sec=60)
    assert reason(expired_forgery) == "token_signature"
    other_ed = Ed25519PrivateKey.generate()
    assert reason(mint_token("peer-1", other_ed, now=NOW, ttl_sec=60)) == "token_signature"
    head, body, sig = mint_token("peer-1", SECRET, now=NOW, ttl_sec=60).split(".")
    tampered = b64(json.dumps({**json.loads(base64.urlsafe_b64decode(body + "==")), "sub": "peer-2"}).encode())
    assert reason(f"{head}.{tampered}.{sig}") == "token_signature"


def test_expiry_and_not_before_honour_the_leeway():
    token = mint_token("peer-1", SECRET, now=NOW, ttl_sec=60)  # exp = NOW + 60
    assert verify(token, now=NOW + datetime.timedelta(seconds=89)) == "peer-1"
    assert reason(token, now=NOW + datetime.timedelta(seconds=90)) == "token_expired"
    assert reason(token, now=NOW + datetime.timedelta(seconds=61), leeway_sec=0) == "token_expired"
    later = mint_token("peer-1", SECRET, now=NOW, ttl_sec=600, not_before=NOW + datetime.timedelta(seconds=100))
    assert reason(later) == "token_not_yet_valid"
    assert verify(later, now=NOW + datetime.timedelta(seconds=71)) == "peer-1"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(NOW.timestamp()) + 60},
        {"sub": "peer-1"},
        {"sub": "", "exp": int(NOW.timestamp()) + 60},
        {"sub": 7, "exp": int(NOW.timestamp()) + 60},
        {"sub": "peer-1", "exp": "tomorrow"},
        {"sub": "peer-1", "exp": True},
        {"sub": "peer-1", "exp": 10**400},
        {"sub": "peer-1", "exp": int(NOW.timestamp()) + 60, "nbf": "now"},
    ],
)
def test_sub_and_exp_are_required_and_typed(claims):
    assert reason(hand_made({"alg": "HS256"}, claims)) == "token_claims"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "a b.c.d",
        "eyJ.eyJ.===",
        hand_made('{"alg":"HS256","alg":"none"}', GOOD_CLAIMS),  # duplicate keys
        hand_made('["HS256"]', GOOD_CLAIMS),
        hand_made({"alg": "HS256"}, '{"sub":"peer-1","exp":Infinity}'),
        hand_made({"alg": "HS256", "crit": ["exp"]}, GOOD_CLAIMS),
        hand_made({"alg": "HS256", "typ": "at+jwt"}, GOOD_CLAIMS),
        "x" * 9000,
    ],
)
def test_malformed_tokens(token):
    assert reason(token) in ("token_malformed", "token_signature")


def test_audience_is_checked_when_configured():
    assert verify(mint_token("peer-1", SECRET, now=NOW, ttl_sec=60, audience="edge-eu"), audience="edge-eu") == "peer-1"
    listed = hand_made({"alg": "HS256"}, {**GOOD_CLAIMS, "aud": ["backend", "edge-eu"]})
    assert verify(listed, audience="edge-eu") == "peer-1"
    assert reason(mint_token("peer-1", SECRET, now=NOW, ttl_sec=60), audience="edge-eu") == "token_audience"
    assert reason(mint_token("peer-1", SECRET, now=NOW, ttl_sec=60, audience="backend"), audience="edge-eu") == "token_audience"


def test_a_token_carrying_aud_is_refused_when_no_audience_is_configured():
    """RFC 7519 4.1.3: an edge without PEER_TOKEN_AUDIENCE is in no audience, so a token meant for one is
    not for it; a token without `aud` is still accepted."""
    assert verify(mint_token("peer-1", SECRET, now=NOW, ttl_sec=60)) == "peer-1"
    assert verify(mint_token("peer-1", ED_KEY, now=NOW, ttl_sec=60)) == "peer-1"
    for aud in ("edge-eu", ["edge-eu", "backend"], [], ""):
        token = hand_made({"alg": "HS256"}, {**GOOD_CLAIMS, "aud": aud})
        assert reason(token) == "token_audience", aud
    with pytest.raises(TokenError) as caught:
        verify(mint_token("peer-1", ED_KEY, now=NOW, ttl_sec=60, audience="edge-eu"))
    assert caught.value.message == "bearer token names an audience (aud) and this edge has none"


def with_unused_bits_set(segment: str) -> str:
    """`segment` with the lowest bit of its last character flipped: a bit the decoder ignores."""
    assert len(segment) % 4 in (2, 3), "a segment of whole 3-byte groups has no unused bits"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    altered = segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]
    assert base64.urlsafe_b64decode(altered + "==") == base64.urlsafe_b64decode(segment + "==")
    return altered


@pytest.mark.parametrize("key", [SECRET, ED_KEY], ids=["HS256", "EdDSA"])
def test_non_canonical_base64url_is_refused(key):
    """Each segment must be the one canonical encoding of its bytes: a signature (or header, or payload)
    altered in the unused bits of its last character decodes to the same bytes and is refused all the
    same; so are padding and characters outside the URL-safe alphabet."""
    head, body, sig = mint_token("peer-1", key, now=NOW, ttl_sec=60).split(".")
    assert verify(f"{head}.{body}.{sig}") == "peer-1"
    with pytest.raises(TokenError) as caught:
        verify(f"{head}.{body}.{with_unused_bits_set(sig)}")
    assert (caught.value.reason, caught.value.message) == ("token_malformed", "bearer token is not canonical base64url")
    odd_header = b64(json.dumps({"alg": "HS256"}).encode())  # 16 bytes: 22 characters, 4 unused bits
    token = hand_made({"alg": "HS256"}, {**GOOD_CLAIMS, "n": 0})  # 44 bytes: 59 characters, 2 unused bits
    assert token.startswith(odd_header + ".") and verify(token) == "peer-1"
    _, hand_body, hand_sig = token.split(".")
    assert reason(f"{with_unused_bits_set(odd_header)}.{hand_body}.{hand_sig}") == "token_malformed"
    # A payload is signed as written, so an altered one fails the signature; one signed as altered
    # (an issuer's odd encoder) is refused for its encoding.
    altered_body = with_unused_bits_set(hand_body)
    assert reason(f"{odd_header}.{altered_body}.{hand_sig}") == "token_signature"
    resigned = hmac.new(SECRET, f"{odd_header}.{altered_body}".encode(), hashlib.sha256).digest()
    assert reason(f"{odd_header}.{altered_body}.{b64(resigned)}") == "token_malformed"
    padded = sig + "=" * (-len(sig) % 4)
    assert padded != sig
    for variant in (padded, sig.replace("-", "+").replace("_", "/"), sig[:20] + " " + sig[20:], sig + "\n"):
        if variant != sig:
            assert reason(f"{head}.{body}.{variant}") == "token_malformed", variant


def test_rfc_9864_ed25519_algorithm_name_is_accepted_for_ed25519_keys():
    """`Ed25519` (RFC 9864) and `EdDSA` verify alike against the Ed25519 keys, and only against them."""
    modern = mint_token("peer-1", ED_KEY, now=NOW, ttl_sec=60, extra_header={"alg": "Ed25519"})
    assert json.loads(base64.urlsafe_b64decode(modern.split(".")[0] + "=="))["alg"] == "Ed25519"
    claims = verify_token(modern, KEYS, now=NOW, leeway_sec=30)
    assert (claims.subject, claims.algorithm) == ("peer-1", "Ed25519")
    ed_only = TokenKeys(ed25519_public_keys=(ED_KEY.public_key(),))
    assert verify(modern, ed_only) == "peer-1"
    assert ed_only.algorithms == {"EdDSA", "Ed25519"}
    hs_only = TokenKeys(hmac_secrets=(SECRET,))
    assert reason(modern, hs_only) == "token_algorithm"
    other = mint_token("peer-1", Ed25519PrivateKey.generate(), now=NOW, ttl_sec=60, extra_header={"alg": "Ed25519"})
    assert reason(other) == "token_signature"
    # An HMAC signature under the new name is no Ed25519 signature.
    assert reason(hand_made({"alg": "Ed25519"}, GOOD_CLAIMS)) == "token_signature"
    for spelling in ("ed25519", "ED25519", "Ed448", "EdDSA25519"):
        assert reason(hand_made({"alg": spelling}, GOOD_CLAIMS)) == "token_algorithm", spelling


def test_every_configured_secret_and_key_verifies_for_rotation():
    rotated = TokenKeys(hmac_secrets=(OTHER_SECRET, SECRET), ed25519_public_keys=(Ed25519PrivateKey.generate().public_key(), ED_KEY.public_key()))
    assert verify(mint_token("peer-1", SECRET, now=NOW, ttl_sec=60), rotated) == "peer-1"
    assert verify(mint_token("peer-1", ED_KEY, now=NOW, ttl_sec=60), rotated) == "peer-1"


def test_key_files_are_parsed_strictly_and_never_echoed():
    assert parse_hmac_secrets(b"\n  " + SECRET + b"  \n" + OTHER_SECRET + b"\n\n") == (SECRET, OTHER_SECRET)
    for bad in (b"", b"\n\n", b"short-secret\n", SECRET + b"\nshort"):
        with pytest.raises(KeyFileError) as caught:
            parse_hmac_secrets(bad)
        assert "short" not in str(caught.value) and SECRET.decode() not in str(caught.value)
    pem = ED_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(parse_ed25519_public_keys(pem + pem)) == 2
    with pytest.raises(KeyFileError):
        parse_ed25519_public_keys(b"not a key")
    ca_pem = trustme.CA().cert_pem.bytes()
    with pytest.raises(KeyFileError):
        parse_ed25519_public_keys(ca_pem)
    assert SECRET.decode() not in repr(TokenKeys(hmac_secrets=(SECRET,)))


# ---------------------------------------------------------------------------------------- auth policy


def cert(subject_cn: str | None = None, *sans: tuple[str, str]) -> dict:
    value: dict = {"subject": ((("organizationName", "trustme"),),)}
    if subject_cn is not None:
        value["subject"] += ((("commonName", subject_cn),),)
    if sans:
        value["subjectAltName"] = sans
    return value


def test_certificate_identities_san_wins_over_cn():
    assert certificate_identities(cert("peer-cn")) == ("peer-cn",)
    assert certificate_identities(cert("peer-cn", ("DNS", "peer-dns"), ("URI", "urn:peer:7"))) == ("peer-dns", "urn:peer:7")
    assert certificate_identities(cert("peer-cn", ("email", "a@b.c"), ("IP Address", "10.0.0.1"))) == ("peer-cn",)
    assert certificate_identities(None) == () and certificate_identities({}) == ()


def test_bearer_metadata():
    assert bearer_token(()) is None
    assert bearer_token(("Bearer abc",)) == "abc" and bearer_token(("bearer  abc ",)) == "abc"
    for bad in (("Basic abc",), ("Bearer",), ("Bearer a", "Bearer b"), ("abc",)):
        with pytest.raises(TokenError):
            bearer_token(bad)


def presented(certificate=None, token=None) -> Presented:
    return Presented(certificate=certificate, authorization=(f"Bearer {token}",) if token else ())


GOOD_TOKEN = mint_token("peer-1", SECRET, now=NOW, ttl_sec=60)
OTHER_TOKEN = mint_token("peer-2", SECRET, now=NOW, ttl_sec=60)
BAD_TOKEN = mint_token("peer-1", OTHER_SECRET, now=NOW, ttl_sec=60)
CERT_1 = cert(None, ("DNS", "peer-1"))
CERT_2 = cert(None, ("DNS", "peer-2"))

POLICY_TABLE = [
    # mode, credentials, expected (Admitted method | StatusCode)
    ("none", presented(), "none"),
    ("mtls", presented(CERT_1), "certificate"),
    ("mtls", presented(CERT_2), StatusCode.PERMISSION_DENIED),
    ("mtls", presented(None, GOOD_TOKEN), StatusCode.UNAUTHENTICATED),
    ("mtls", presented(), StatusCode.UNAUTHENTICATED),
    ("token", presented(None, GOOD_TOKEN), "token"),
    ("token", presented(None, OTHER_TOKEN), StatusCode.PERMISSION_DENIED),
    ("token", presented(None, BAD_TOKEN), StatusCode.UNAUTHENTICATED),
    ("token", presented(CERT_1), StatusCode.UNAUTHENTICATED),
    ("mtls_or_token", presented(CERT_1, BAD_TOKEN), "certificate"),
    ("mtls_or_token", presented(CERT_2, GOOD_TOKEN), "token"),
    ("mtls_or_token", presented(CERT_2, BAD_TOKEN), StatusCode.PERMISSION_DENIED),
    ("mtls_or_token", presented(None, BAD_TOKEN), StatusCode.UNAUTHENTICATED),
    ("mtls_or_token", presented(), StatusCode.UNAUTHENTICATED),
]


@pytest.mark.parametrize("mode, credentials, expected", POLICY_TABLE)
def test_policy(mode, credentials, expected):
    decision = decide(AuthMode(mode), "peer-1", credentials, tokens=POLICY, now=NOW)
    if isinstance(expected, str):
        assert decision == Admitted(expected)
    else:
        assert isinstance(decision, Refused) and decision.code is expected
        assert GOOD_TOKEN not in decision.message and BAD_TOKEN not in decision.message


def test_ids_are_compared_exactly():
    """Peer ids are case-sensitive: a certificate for peer-1 does not prove PEER-1."""
    assert isinstance(decide(AuthMode.MTLS, "PEER-1", presented(CERT_1), tokens=None, now=NOW), Refused)


def test_refusal_names_what_was_proven():
    decision = decide(AuthMode.MTLS_OR_TOKEN, "peer-1", presented(CERT_2, OTHER_TOKEN), tokens=POLICY, now=NOW)
    assert isinstance(decision, Refused) and decision.reason == "wrong_peer_id"
    assert decision.proven == ("peer-2", "peer-2") and decision.method == "certificate+token"


def test_auth_modes_match_the_setting():
    assert tuple(mode.value for mode in AuthMode) == PEER_AUTH_MODES


# -------------------------------------------------------------------------------------------- limits


def test_token_bucket_burst_then_rate():
    bucket = TokenBucket.full(rate=10, burst=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(100.09)
    assert bucket.take(100.11) and not bucket.take(100.11)
    assert bucket.is_full(101.0) and [bucket.take(101.0) for _ in range(6)] == [True] * 5 + [False]


def test_grant_adds_uncapped_credit_that_lapses():
    bucket = TokenBucket.full(rate=10, burst=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    bucket.grant(3.0, until=6.0)  # 30 tokens of credit
    assert sum(bucket.take(3.0) for _ in range(40)) == 5 + 30
    bucket.grant(3.0, until=7.0)
    assert sum(bucket.take(7.5) for _ in range(40)) == 5  # the credit lapsed at 7.0


def test_message_meter_credits_only_the_time_it_was_held():
    meter = MessageMeter.start(100.0, 10, now=0.0)
    assert all(meter.message(0.0) for _ in range(10)) and not meter.message(0.0)
    meter.held(1.0)
    meter.released(6.0)  # 5 s held: 500 messages of credit
    assert sum(meter.message(6.0) for _ in range(600)) == 10 + 500
    meter.released(9.0)  # not held: nothing
    assert sum(meter.message(9.0) for _ in range(600)) == 10
    assert meter.exceeded_message() == "more than 100 messages per second (burst 10): slow down"


def test_address_keys():
    assert address_key("203.0.113.9") == "203.0.113.9"
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::7") == address_key("2001:db8:1:2:aaaa::1")
    assert address_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key(None) is None


def test_address_throttle_per_address_with_episodes():
    throttle = AddressThrottle(rate=1.0, burst=2)
    assert [throttle.attempt("a", 0.0).allowed for _ in range(3)] == [True, True, False]
    assert throttle.attempt("b", 0.0).allowed  # another address has its own bucket
    assert not throttle.attempt("a", 0.5).episode_started  # the episode started at the first refusal
    lifted = throttle.attempt("a", 1.1)
    assert lifted.allowed and lifted.episode_refused == 2
    assert throttle.attempt(None, 0.0).allowed  # no address (in-process stream): never throttled
    assert AddressThrottle(rate=0.0, burst=1).attempt("a", 0.0).allowed and not AddressThrottle(0.0, 1).enabled


def test_address_throttle_forgets_the_least_recent_address_beyond_its_bound():
    throttle = AddressThrottle(rate=1.0, burst=1, max_addresses=3)
    for key in "abc":
        assert throttle.attempt(key, 0.0).allowed
    assert not throttle.attempt("a", 0.0).allowed  # a is now the most recent
    assert throttle.attempt("d", 0.0).allowed and len(throttle) == 3  # b is forgotten
    assert throttle.attempt("b", 0.0).allowed  # ... and starts again with a full bucket
    assert not throttle.attempt("a", 0.0).allowed


def test_unregistered_streams():
    limit = UnregisteredStreams(limit=2)
    assert limit.try_enter() and limit.try_enter() and not limit.try_enter()
    limit.leave()
    assert limit.try_enter() and limit.count == 2


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_message_parser_counts_arrivals_ahead_of_consumption(chunk):
    """`feed` reports each message once, when its last byte arrives, however the bytes are cut and
    whether or not `next_message` has taken anything yet."""
    bodies = [b"", b"a", b"bb" * 10, b"c" * 300]
    wire = b"".join(b"\x00" + len(body).to_bytes(4, "big") + body for body in bodies)
    parser = MessageParser(1000, None)
    arrived: list[int] = []
    taken: list[bytes] = []
    for start in range(0, len(wire), chunk):
        arrived.append(parser.feed(wire[start : start + chunk]))
        if start % (3 * chunk) == 0:  # consume now and then, in between
            while (message := parser.next_message()) is not None:
                taken.append(message)
    while (message := parser.next_message()) is not None:
        taken.append(message)
    assert sum(arrived) == len(bodies) and taken == bodies


# ------------------------------------------------------------------------------------------- start-up


def test_none_mode_warns_at_start_up():
    with structlog.testing.capture_logs() as logs:
        load_admission(settings_for_tests(peer_auth_mode="none"), lambda: NOW)
    [warning] = [e for e in logs if e["event"] == "peer_auth_disabled"]
    assert warning["log_level"] == "warning" and "any peer id" in warning["detail"]


def test_token_mode_needs_a_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_admission(settings_for_tests(peer_auth_mode="token"), lambda: NOW)
    assert caught.value.variable == "PEER_TOKEN_HMAC_SECRET_PATH"
    assert "python -m edge certs" in str(caught.value)


def test_key_file_errors_name_the_variable_and_never_the_secret(tmp_path):
    short = tmp_path / "short.secret"
    short.write_bytes(b"too-short-to-be-a-secret\n")
    short.chmod(0o600)
    cases = [
        ({"peer_token_hmac_secret_path": tmp_path / "missing"}, "PEER_TOKEN_HMAC_SECRET_PATH"),
        ({"peer_token_hmac_secret_path": short}, "PEER_TOKEN_HMAC_SECRET_PATH"),
        ({"peer_token_ed25519_public_key_path": short}, "PEER_TOKEN_ED25519_PUBLIC_KEY_PATH"),
    ]
    for overrides, variable in cases:
        with pytest.raises(ConfigError) as caught:
            load_admission(settings_for_tests(peer_auth_mode="token", **overrides), lambda: NOW)
        assert caught.value.variable == variable
        assert "too-short" not in str(caught.value) and "\n" not in str(caught.value)


def test_mtls_needs_tls_and_a_client_ca(tmp_path, tls_files):
    with pytest.raises(ConfigError) as caught:
        load_admission(settings_for_tests(peer_auth_mode="mtls"), lambda: NOW)
    assert caught.value.variable == "PEER_AUTH_MODE"
    tls = dict(grpc_use_tls=True, grpc_cert_path=tls_files.cert_path, grpc_key_path=tls_files.key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for ca_path in (None, tmp_path / "missing.pem", tls_files.key_path):
        with pytest.raises(ConfigError) as caught:
            apply_peer_tls(context, settings_for_tests(peer_auth_mode="mtls", grpc_client_ca_path=ca_path, **tls))
        assert caught.value.variable == "GRPC_CLIENT_CA_PATH"
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(tls_files.ca_pem)
    apply_peer_tls(context, settings_for_tests(peer_auth_mode="mtls_or_token", grpc_client_ca_path=ca_path, **tls))
    assert context.verify_mode == ssl.CERT_OPTIONAL  # a certificate, when presented, must verify


def test_private_files_open_to_others_are_warned_about_and_ignored_settings_too(tmp_path, tls_files):
    secret = tmp_path / "peer-token.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o640)
    key = tmp_path / "server.key"
    key.write_bytes(tls_files.key_path.read_bytes())
    key.chmod(0o644)
    settings = settings_for_tests(
        peer_auth_mode="token",
        peer_token_hmac_secret_path=secret,
        grpc_client_ca_path=tmp_path / "ca.pem",
        grpc_use_tls=True,
        grpc_cert_path=tls_files.cert_path,
        grpc_key_path=key,
    )
    with structlog.testing.capture_logs() as logs:
        load_admission(settings, lambda: NOW)
    open_files = {e["variable"]: e["mode"] for e in logs if e["event"] == "private_file_readable_by_others"}
    assert open_files == {"GRPC_KEY_PATH": "0o644", "PEER_TOKEN_HMAC_SECRET_PATH": "0o640"}
    assert [e["variable"] for e in logs if e["event"] == "peer_auth_setting_ignored"] == ["GRPC_CLIENT_CA_PATH"]
    assert_no_secrets(logs, [SECRET, tls_files.key_path.read_text().splitlines()[1]])
    secret.chmod(0o600)
    key.chmod(0o600)
    with structlog.testing.capture_logs() as logs:
        load_admission(settings, lambda: NOW)
    assert not [e for e in logs if e["event"] == "private_file_readable_by_others"]
