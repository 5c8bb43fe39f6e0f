"""Signed peer tokens: a small, strict JWT (RFC 7519, JWS compact form) verifier and minter.

Two algorithms, each bound to its own key, so one can never be verified with the other's key:

* `HS256`: HMAC-SHA256 with a shared secret (PEER_TOKEN_HMAC_SECRET_PATH: one secret per line, each at
  least 32 bytes; every line is tried, so secrets can be rotated without a flag day; tokens are minted
  with the first);
* `Ed25519` (RFC 9864's fully-specified name) or `EdDSA` (RFC 8037's polymorphic one, which RFC 9864
  deprecates but most issuers still write): Ed25519 (PEER_TOKEN_ED25519_PUBLIC_KEY_PATH: one or more PEM
  public keys; every key is tried). Both names mean the same check against the same keys.

The header's `alg` must be one of the algorithms that has a key configured (`none` never is); a header
with `crit` is refused (we implement no extensions); duplicate JSON keys are refused (two parsers must
never read one token differently). Each segment must be canonical base64url (RFC 7515 §2: no padding,
only the URL-safe alphabet, and the unused low bits of the last character zero), checked by decoding and
encoding again: otherwise several strings would carry one signature, and a token altered in those bits
would still verify. The signature is checked before any claim is looked at. Claims: `sub` (the peer id, a
non-empty string) and `exp` (a number) are required; `nbf` is honoured when present; `exp`/`nbf` are
compared with the wall clock with PEER_TOKEN_LEEWAY_SEC of tolerance. `aud` (RFC 7519 §4.1.3): with
PEER_TOKEN_AUDIENCE set, it must be or contain that value; without it, a token carrying `aud` is refused,
since this edge cannot identify itself with any audience the issuer meant.

Nothing here logs, and no error message contains token or key material.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeGuard

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HS256: Final = "HS256"
EDDSA: Final = "EdDSA"
#: RFC 9864's fully-specified name for EdDSA over Ed25519; verified exactly as `EdDSA`.
ED25519: Final = "Ed25519"
#: Longest token accepted (a peer token is a few hundred bytes).
MAX_TOKEN_CHARS: Final = 8192
MIN_HMAC_SECRET_BYTES: Final = 32
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")
_MAX_TIMESTAMP: Final = 2**53
_SIGNATURE_BYTES: Final = {HS256: 32, EDDSA: 64, ED25519: 64}


class TokenError(Exception):
    """A token that proves nothing. `reason` is a log code, `message` is safe to show the peer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@attrs.frozen(repr=False)
class TokenKeys:
    """Verification keys, read once at start-up. Its repr never shows key material."""

    hmac_secrets: tuple[bytes, ...] = ()
    ed25519_public_keys: tuple[Ed25519PublicKey, ...] = ()

    @property
    def algorithms(self) -> frozenset[str]:
        algorithms = set()
        if self.hmac_secrets:
            algorithms.add(HS256)
        if self.ed25519_public_keys:
            algorithms.update((EDDSA, ED25519))
        return frozenset(algorithms)

    def __repr__(self) -> str:
        return f"TokenKeys(hmac_secrets=<{len(self.hmac_secrets)}>, ed25519_public_keys=<{len(self.ed25519_public_keys)}>)"


@attrs.frozen
class TokenClaims:
    subject: str
    expires_at: datetime.datetime
    algorithm: str


# ------------------------------------------------------------------------------------------- verifying


def verify_token(
    token: str,
    keys: TokenKeys,
    *,
    now: datetime.datetime,
    leeway_sec: float,
    audience: str | None = None,
) -> TokenClaims:
    """The claims of a valid token, or TokenError saying (safely) why it is not."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("token_malformed", "bearer token is too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise TokenError("token_malformed", "bearer token is not a compact JWS (header.payload.signature)")
    header = _json_object(parts[0])
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in keys.algorithms:
        raise TokenError("token_algorithm", "bearer token algorithm is not accepted")
    if "crit" in header:
        raise TokenError("token_malformed", "bearer token has critical header extensions")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise TokenError("token_malformed", "bearer token typ is not JWT")
    signature = _b64decode(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    if len(signature) != _SIGNATURE_BYTES[algorithm] or not _signature_valid(algorithm, signing_input, signature, keys):
        raise TokenError("token_signature", "bearer token signature is invalid")
    claims = _json_object(parts[1])
    return _check_claims(claims, algorithm, now=now, leeway_sec=leeway_sec, audience=audience)


def _signature_valid(algorithm: str, signing_input: bytes, signature: bytes, keys: TokenKeys) -> bool:
    if algorithm == HS256:
        valid = False
        for secret in keys.hmac_secrets:  # no early exit: time does not tell which secret matched
            expected = hmac.new(secret, signing_input, hashlib.sha256).digest()
            valid |= hmac.compare_digest(expected, signature)
        return valid
    for public_key in keys.ed25519_public_keys:
        try:
            public_key.verify(signature, signing_input)
        except InvalidSignature:
            continue
        return True
    return False


def _check_claims(
    claims: Mapping[str, Any], algorithm: str, *, now: datetime.datetime, leeway_sec: float, audience: str | None
) -> TokenClaims:
    subject = claims.get("sub")
    expires = claims.get("exp")
    if not isinstance(subject, str) or not subject or not _is_number(expires):
        raise TokenError("token_claims", "bearer token must carry sub (the peer id) and exp")
    not_before = claims.get("nbf")
    if not_before is not None and not _is_number(not_before):
        raise TokenError("token_claims", "bearer token nbf is not a number")
    moment = now.timestamp()
    if moment >= expires + leeway_sec:
        raise TokenError("token_expired", "bearer token has expired")
    if not_before is not None and moment + leeway_sec < not_before:
        raise TokenError("token_not_yet_valid", "bearer token is not valid yet")
    if audience is not None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in audiences:
            raise TokenError("token_audience", "bearer token is not meant for this edge (aud)")
    elif "aud" in claims:
        raise TokenError("token_audience", "bearer token names an audience (aud) and this edge has none")
    try:
        expires_at = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):  # beyond year 9999
        expires_at = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
    return TokenClaims(subject=subject, expires_at=expires_at, algorithm=algorithm)


def _is_number(value: object) -> TypeGuard[float]:
    # The range check also refuses NaN, infinities and integers too large to compare with a float.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -_MAX_TIMESTAMP < value < _MAX_TIMESTAMP


def _b64decode(segment: str) -> bytes:
    """The bytes of a canonical base64url segment (no padding, unused trailing bits zero)."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:
        raise TokenError("token_malformed", "bearer token is not valid base64url") from None
    # The decoder ignores the unused low bits of the last character (and would skip characters outside
    # the alphabet); encoding again tells a canonical segment from its variants.
    if _b64encode(data) != segment:
        raise TokenError("token_malformed", "bearer token is not canonical base64url")
    return data


def _no_duplicates(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise TokenError("token_malformed", "bearer token header or payload is not a JSON object") from None
    if not isinstance(value, dict):
        raise TokenError("token_malformed", "bearer token header or payload is not a JSON object")
    return value


# -------------------------------------------------------------------------------------------- minting


SigningKey = bytes | Ed25519PrivateKey


def mint_token(
    peer_id: str,
    key: SigningKey,
    *,
    now: datetime.datetime,
    ttl_sec: float,
    audience: str | None = None,
    not_before: datetime.datetime | None = None,
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    """A token for `peer_id`: HS256 with a secret (bytes), EdDSA with an Ed25519 private key.

    Ed25519 tokens are labelled `EdDSA`, the name every JWT library verifies; an issuer that writes
    RFC 9864's `Ed25519` is accepted as well (`extra_header={"alg": "Ed25519"}` makes one).
    """
    algorithm = EDDSA if isinstance(key, Ed25519PrivateKey) else HS256
    header: dict[str, Any] = {"alg": algorithm, "typ": "JWT", **(extra_header or {})}
    issued = int(now.timestamp())
    claims: dict[str, Any] = {"sub": peer_id, "iat": issued, "exp": int(issued + ttl_sec)}
    if not_before is not None:
        claims["nbf"] = int(not_before.timestamp())
    if audience is not None:
        claims["aud"] = audience
    signing_input = f"{_b64encode_json(header)}.{_b64encode_json(claims)}"
    if isinstance(key, Ed25519PrivateKey):
        signature = key.sign(signing_input.encode("ascii"))
    else:
        signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64encode(signature)}"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64encode_json(value: Mapping[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


# ------------------------------------------------------------------------------------------ key files


class KeyFileError(Exception):
    """A key file the edge cannot use. The message names no key material."""


def parse_hmac_secrets(data: bytes) -> tuple[bytes, ...]:
    """One secret per line (surrounding whitespace ignored, blank lines skipped), each at least 32 bytes."""
    secrets = tuple(line.strip() for line in data.splitlines() if line.strip())
    if not secrets:
        raise KeyFileError("the file holds no secret")
    if any(len(secret) < MIN_HMAC_SECRET_BYTES for secret in secrets):
        raise KeyFileError(f"every secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")
    return secrets


_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def parse_ed25519_public_keys(data: bytes) -> tuple[Ed25519PublicKey, ...]:
    """Every PEM block of the file, each an Ed25519 public key."""
    keys: list[Ed25519PublicKey] = []
    for match in _PEM_BLOCK.finditer(data):
        try:
            key = serialization.load_pem_public_key(match.group(0))
        except (ValueError, TypeError):
            raise KeyFileError("a PEM block is not a public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("a public key is not an Ed25519 key")
        keys.append(key)
    if not keys:
        raise KeyFileError("the file holds no PEM public key")
    return tuple(keys)


def parse_ed25519_private_key(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError("not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("not an Ed25519 private key")
    return key
