"""Peer identity: what a stream proves, and whether that admits the peer id it claims. Pure functions.

A registration *claims* a peer id (`peer_name`). The stream *proves* ids with its credentials:

* a client certificate, verified by the TLS layer against GRPC_CLIENT_CA_PATH, proves the ids named in
  its subjectAltName: every DNS name and every URI, exactly as written. Only a certificate with neither
  proves its subject's common name (CN) instead: a SAN always wins over the CN (RFC 6125), so a
  certificate cannot be made to prove an extra id through a stray CN;
* a bearer token (`authorization: Bearer <jwt>` request metadata, see `edge.peers.tokens`) proves its
  `sub` claim.

Ids are compared exactly (peer ids are case-sensitive, so a DNS name is not folded to lower case).

`prove(mode, presented, ...)` checks the credentials on their own (what the edge knows from a request's
HEADERS); `match(proof, claimed)` then checks the claimed id against what they prove;
`decide(mode, claimed, presented, ...)`, the two together, is the whole policy:

    PEER_AUTH_MODE   admitted when                              otherwise
    none             always (the edge warns at start-up)        -
    mtls             the certificate proves the claimed id      no certificate: UNAUTHENTICATED
    token            the token is valid and its sub is the id   missing/invalid token: UNAUTHENTICATED
    mtls_or_token    either of the two                          see below

A credential that is valid but for another id is PERMISSION_DENIED; a missing or invalid one is
UNAUTHENTICATED. With `mtls_or_token`, a certificate proving the id admits even if a token is also
present and invalid, and vice versa.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from edge.grpc import StatusCode
from edge.peers.tokens import TokenError, TokenKeys, verify_token

#: Request metadata key of the bearer token (gRPC metadata keys are lower case).
AUTHORIZATION_METADATA: Final = "authorization"
#: At most this many proven ids are named in a log line, each cut to this length.
_LOGGED_IDS: Final = 8
_LOGGED_ID_CHARS: Final = 128


class AuthMode(enum.Enum):
    NONE = "none"
    MTLS = "mtls"
    TOKEN = "token"
    MTLS_OR_TOKEN = "mtls_or_token"

    @property
    def uses_certificates(self) -> bool:
        return self in (AuthMode.MTLS, AuthMode.MTLS_OR_TOKEN)

    @property
    def uses_tokens(self) -> bool:
        return self in (AuthMode.TOKEN, AuthMode.MTLS_OR_TOKEN)


AUTH_MODES: Final = tuple(mode.value for mode in AuthMode)


@attrs.frozen
class Presented:
    """The credentials one stream presents, as the transport hands them over."""

    #: `SSLSocket.getpeercert()` form; only present when the certificate was verified.
    certificate: Mapping[str, Any] | None = None
    #: Every `authorization` metadata value of the request (normally zero or one).
    authorization: tuple[str, ...] = ()

    @classmethod
    def from_stream(cls, metadata: Sequence[tuple[str, str | bytes]], certificate: Mapping[str, Any] | None) -> Presented:
        values = tuple(
            value if isinstance(value, str) else "" for key, value in metadata if key == AUTHORIZATION_METADATA
        )
        return cls(certificate=certificate or None, authorization=values)


@attrs.frozen
class TokenPolicy:
    keys: TokenKeys
    leeway_sec: float
    audience: str | None = None


@attrs.frozen
class Admitted:
    method: str  # "certificate", "token" or "none"


@attrs.frozen
class Refused:
    code: StatusCode
    #: Safe to send to the peer: never token text, key material or the ids a credential proves.
    message: str
    #: A log code: no_credentials, wrong_peer_id, token_expired, token_signature, ...
    reason: str
    #: Ids the presented credentials do prove (for the log line), and how.
    proven: tuple[str, ...] = ()
    method: str | None = None

    def loggable_proven(self) -> list[str]:
        return [peer_id[:_LOGGED_ID_CHARS] for peer_id in self.proven[:_LOGGED_IDS]]


Decision = Admitted | Refused


def certificate_identities(certificate: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The ids a verified client certificate proves: its DNS and URI SANs, else its CN(s)."""
    if not certificate:
        return ()
    names = tuple(
        value
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "URI") and isinstance(value, str)
    )
    if names:
        return names
    return tuple(
        value
        for rdn in certificate.get("subject", ())
        for key, value in rdn
        if key == "commonName" and isinstance(value, str)
    )


def bearer_token(authorization: tuple[str, ...]) -> str | None:
    """The token of the one `authorization: Bearer <token>` value; None if there is none.
    Raises TokenError for several values or another scheme."""
    if not authorization:
        return None
    if len(authorization) > 1:
        raise TokenError("token_malformed", "send exactly one authorization metadata entry")
    scheme, _, token = authorization[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenError("token_malformed", "authorization metadata must be 'Bearer <token>'")
    return token


@attrs.frozen
class Proven:
    """What a stream's credentials prove before any peer id is claimed: the ids, and how."""

    #: None: every id (PEER_AUTH_MODE=none).
    ids: tuple[str, ...] | None
    #: One entry per credential that proved something: ("certificate" | "token", its ids).
    by_method: tuple[tuple[str, tuple[str, ...]], ...] = ()


def prove(
    mode: AuthMode, presented: Presented, *, tokens: TokenPolicy | None, now: datetime.datetime
) -> Proven | Refused:
    """Check the stream's credentials on their own (the token's signature and claims, the verified
    certificate's ids), with no claimed id yet: this is what the edge knows from a request's HEADERS.
    Refused (UNAUTHENTICATED) when nothing valid is presented."""
    if mode is AuthMode.NONE:
        return Proven(ids=None)
    by_method: list[tuple[str, tuple[str, ...]]] = []
    token_error: TokenError | None = None
    if mode.uses_certificates and presented.certificate:
        ids = certificate_identities(presented.certificate)
        if ids:
            by_method.append(("certificate", ids))
    if mode.uses_tokens:
        try:
            token = bearer_token(presented.authorization)
            if token is not None:
                if tokens is None:  # start-up refuses this configuration; fail closed all the same
                    raise TokenError("token_algorithm", "bearer token algorithm is not accepted")
                claims = verify_token(
                    token, tokens.keys, now=now, leeway_sec=tokens.leeway_sec, audience=tokens.audience
                )
                by_method.append(("token", (claims.subject,)))
        except TokenError as error:
            token_error = error
    if by_method:
        return Proven(ids=tuple(i for _, ids in by_method for i in ids), by_method=tuple(by_method))
    if token_error is not None:
        return Refused(StatusCode.UNAUTHENTICATED, token_error.message, token_error.reason, method="token")
    return Refused(StatusCode.UNAUTHENTICATED, _required_message(mode), "no_credentials")


def decide(
    mode: AuthMode,
    claimed: str,
    presented: Presented,
    *,
    tokens: TokenPolicy | None,
    now: datetime.datetime,
) -> Decision:
    """Admit the claimed peer id, or say why not (see the module docstring for the policy)."""
    proof = prove(mode, presented, tokens=tokens, now=now)
    if isinstance(proof, Refused):
        return proof
    return match(proof, claimed)


def match(proof: Proven, claimed: str) -> Decision:
    """Whether what the stream proved admits the peer id its registration claims."""
    if proof.ids is None:
        return Admitted("none")
    for method, ids in proof.by_method:
        if claimed in ids:
            return Admitted(method)
    methods = [method for method, _ in proof.by_method]
    what = " and ".join("client certificate" if m == "certificate" else "bearer token" for m in methods)
    return Refused(
        StatusCode.PERMISSION_DENIED,
        f"{what} does not prove peer id {claimed!r}",
        "wrong_peer_id",
        proof.ids,
        "+".join(methods),
    )


def _required_message(mode: AuthMode) -> str:
    if mode is AuthMode.MTLS:
        return "a client certificate is required"
    if mode is AuthMode.TOKEN:
        return "a bearer token is required (metadata authorization: Bearer <token>)"
    return "a client certificate or a bearer token (metadata authorization: Bearer <token>) is required"
