"""Admission to the peer port: who may register as which peer, and how hard a client may push.

Built once at start-up by `load_admission(settings, now)`, which reads every key file (a missing,
unreadable or malformed one is a ConfigError naming its variable: exit code 2), warns about private files
that others can read, and warns loudly when peers are not authenticated (PEER_AUTH_MODE=none).
`apply_peer_tls(context, settings)` adds client-certificate verification to the server TLS context.

Each hook into the peer server is one call:

* `apply_peer_tls(context, settings)` and `message_meter_factory(...)` in `grpc_config`
  (edge.peers.server): client certificates, and a per-stream inbound message meter the transport runs as
  messages *arrive* (PEER_MESSAGE_RATE / PEER_MESSAGE_BURST). Over the rate, the stream fails with
  `RateLimited` (a `ProtocolViolation`), so the session ends with reason `protocol_error` and the peer
  gets RESOURCE_EXHAUSTED saying why, after the messages that arrived within the limit.
* `admission.guard(handler, metrics)` wraps the `Connect` handler (edge.peers.server). Before the handler
  runs, a new stream is counted against its source address (PEER_REGISTRATION_RATE_PER_ADDRESS) and
  against the streams still waiting to register (MAX_UNREGISTERED_STREAMS); over either it is refused at
  once with RESOURCE_EXHAUSTED (after a registration response with `success = false` where one can be
  sent), counted in `registrations_refused` (cause `address_throttled` or `unregistered_streams_full`),
  and costs nothing more.
  Then its credentials are checked on their own, from the request's HEADERS (edge.peers.auth.prove):
  proving nothing, it is refused UNAUTHENTICATED before its registration is read, having held no more
  than its 64 KiB initial window; proven (or with PEER_AUTH_MODE=none), its window is opened
  (`ServerStream.open_window`) so a registration of any allowed size can arrive.
* `admission.authorize(stream, registration)` (edge.peers.handler, once the registration parsed): the
  claimed peer id against what the stream proves (edge.peers.auth). Refused: a `PeerProtocolError` with
  UNAUTHENTICATED or PERMISSION_DENIED, which the handler's refusal path answers, and one log line naming
  the claimed and the proven ids. Admitted: the stream stops counting as unregistered, and its bytes
  leave the edge-wide PEER_UNREGISTERED_BUFFER_BYTES budget (`ServerStream.admit`).
"""

from __future__ import annotations

import datetime
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from edge.config import ConfigError, Settings
from edge.grpc import Handler, ServerStream, Status, StatusCode, StreamError
from edge.ops.metrics import EdgeMetrics
from edge.peers import protocol
from edge.peers.auth import AuthMode, Presented, Proven, Refused, TokenPolicy, match, prove
from edge.peers.limits import AddressThrottle, UnregisteredStreams, address_key
from edge.peers.protocol import PeerProtocolError, Registration
from edge.peers.tokens import KeyFileError, TokenKeys, parse_ed25519_public_keys, parse_hmac_secrets

log = structlog.get_logger(__name__)

#: How long a refusal of the guard may take to write before the stream is closed without it. Short:
#: a flood of refused streams must not hold tasks.
GUARD_REFUSAL_WRITE_TIMEOUT: Final = 1.0
#: Largest key file read (a file of secrets or public keys is a few KiB).
MAX_KEY_FILE_BYTES: Final = 1024 * 1024


# ------------------------------------------------------------------------------------------ admission


@attrs.define(eq=False)
class Admission:
    """Admission policy and limits of one edge. Only the Trio thread serving peers touches it."""

    mode: AuthMode
    tokens: TokenPolicy | None
    edge_id: str
    now: Callable[[], datetime.datetime]
    throttle: AddressThrottle
    unregistered: UnregisteredStreams
    _pending: set[ServerStream] = attrs.field(factory=set, init=False)
    #: What each pending stream's credentials proved on its HEADERS (see `_authenticate`).
    _proofs: dict[ServerStream, Proven] = attrs.field(factory=dict, init=False)
    _unregistered_refusals: int = attrs.field(default=0, init=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, now: Callable[[], datetime.datetime], tokens: TokenPolicy | None = None
    ) -> Admission:
        return cls(
            mode=AuthMode(settings.peer_auth_mode),
            tokens=tokens,
            edge_id=settings.edge_id,
            now=now,
            throttle=AddressThrottle(
                rate=settings.peer_registration_rate_per_address,
                burst=settings.peer_registration_burst_per_address,
            ),
            unregistered=UnregisteredStreams(limit=settings.max_unregistered_streams),
        )

    # ---- hook 1: around the Connect handler

    def guard(self, handler: Handler, metrics: EdgeMetrics) -> Handler:
        async def guarded(stream: ServerStream) -> Status | None:
            return await self._guarded(handler, stream, metrics)

        return guarded

    async def _guarded(self, handler: Handler, stream: ServerStream, metrics: EdgeMetrics) -> Status | None:
        now = trio.current_time()
        source = address_key(stream.remote_address[0] if stream.remote_address else None)
        verdict = self.throttle.attempt(source, now)
        if verdict.episode_refused:
            log.info("peer_registrations_throttle_lifted", source=source, refused=verdict.episode_refused)
        if not verdict.allowed:
            if verdict.episode_started:
                log.warning(
                    "peer_registrations_throttled",
                    source=source,
                    rate_per_sec=self.throttle.rate,
                    burst=self.throttle.burst,
                )
            metrics.registrations_refused.labels(cause="address_throttled").inc()
            message = f"too many new streams from this address (over {self.throttle.rate:g} per second); retry later"
            return await self._refuse(stream, StatusCode.RESOURCE_EXHAUSTED, message)
        if not self.unregistered.try_enter():
            self._unregistered_refusals += 1
            if self._unregistered_refusals == 1:
                log.warning("peer_unregistered_streams_full", limit=self.unregistered.limit)
            metrics.registrations_refused.labels(cause="unregistered_streams_full").inc()
            message = "edge has too many streams waiting to register; retry later"
            return await self._refuse(stream, StatusCode.RESOURCE_EXHAUSTED, message)
        if self._unregistered_refusals:
            log.info("peer_unregistered_streams_available", refused=self._unregistered_refusals)
            self._unregistered_refusals = 0
        self._pending.add(stream)
        try:
            refused = self._authenticate(stream)
            if refused is not None:
                metrics.registration_refused(refused.code)  # cause "unauthenticated", as at registration
                return await self._refuse(stream, refused.code, refused.message)
            return await handler(stream)
        finally:
            self._proofs.pop(stream, None)
            self._leave_unregistered(stream)

    def _authenticate(self, stream: ServerStream) -> Refused | None:
        """On the request's HEADERS, before its registration is read: a stream whose credentials prove
        nothing is refused here, so it never holds more than its initial window; a proven one (or any,
        with PEER_AUTH_MODE=none) gets its full window to send its registration, however large."""
        presented = Presented.from_stream(stream.metadata, stream.peer_certificate)
        proof = prove(self.mode, presented, tokens=self.tokens, now=self.now())
        if isinstance(proof, Refused):
            self._log_refusal(None, proof)
            return proof
        self._proofs[stream] = proof
        stream.open_window()
        return None

    async def _refuse(self, stream: ServerStream, code: StatusCode, message: str) -> Status:
        refusal = protocol.registration_refused(message, self.edge_id)
        with trio.move_on_after(GUARD_REFUSAL_WRITE_TIMEOUT):
            try:
                await stream.send_message(refusal.SerializeToString())
            except StreamError:
                pass  # gone already; the status is all it would have got
        return Status(code, message)

    def _leave_unregistered(self, stream: ServerStream) -> None:
        if stream in self._pending:
            self._pending.discard(stream)
            self.unregistered.leave()

    # ---- hook 2: the claimed peer id

    def authorize(self, stream: ServerStream, registration: Registration) -> None:
        """Admit `registration.peer_id` on `stream`, or raise PeerProtocolError (UNAUTHENTICATED or
        PERMISSION_DENIED, with a message safe to send)."""
        proof = self._proofs.get(stream)
        if proof is None:  # not through `guard`
            presented = Presented.from_stream(stream.metadata, stream.peer_certificate)
            proved = prove(self.mode, presented, tokens=self.tokens, now=self.now())
            decision = proved if isinstance(proved, Refused) else match(proved, registration.peer_id)
        else:
            decision = match(proof, registration.peer_id)
        if isinstance(decision, Refused):
            self._log_refusal(registration.peer_id, decision)
            raise PeerProtocolError(decision.message, decision.code)
        structlog.contextvars.bind_contextvars(auth=decision.method)
        stream.admit()  # registered: its bytes leave the budget for unregistered streams
        self._leave_unregistered(stream)

    @staticmethod
    def _log_refusal(claimed: str | None, decision: Refused) -> None:
        level = log.warning if decision.code is StatusCode.PERMISSION_DENIED else log.info
        level(
            "peer_auth_refused",
            claimed_peer_id=claimed,
            proven_peer_ids=decision.loggable_proven(),
            method=decision.method,
            reason=decision.reason,
            code=decision.code.name,
        )

    @property
    def unregistered_streams(self) -> int:
        return self.unregistered.count


# ------------------------------------------------------------------------------------------- start-up


def load_admission(settings: Settings, now: Callable[[], datetime.datetime]) -> Admission:
    """Read the key files and check the identity settings, once, at start-up. Raises ConfigError.

    Warnings (private files others can read, settings the mode ignores, no authentication) are logged
    only once everything is valid, so a refused start-up prints its one error line and nothing else.
    """
    mode = AuthMode(settings.peer_auth_mode)
    if mode.uses_certificates and not settings.grpc_use_tls:
        raise ConfigError(
            "PEER_AUTH_MODE", "none or token while GRPC_USE_TLS is false (client certificates need TLS)", mode.value
        )
    tokens = _load_token_policy(settings, mode)
    if settings.grpc_use_tls:
        warn_if_private_file_is_open("GRPC_KEY_PATH", settings.grpc_key_path)
    if tokens is not None and settings.peer_token_hmac_secret_path is not None:
        warn_if_private_file_is_open("PEER_TOKEN_HMAC_SECRET_PATH", settings.peer_token_hmac_secret_path)
    _warn_ignored(settings, mode)
    if mode is AuthMode.NONE:
        log.warning(
            "peer_auth_disabled",
            detail="PEER_AUTH_MODE=none: any client that reaches the peer port can register as any peer id "
            "and receive that peer's commands",
        )
    elif mode.uses_tokens and not settings.grpc_use_tls:
        log.warning("peer_tokens_over_plaintext", detail="GRPC_USE_TLS=false: bearer tokens cross the network in clear")
    log.info(
        "peer_auth_configured",
        mode=mode.value,
        token_algorithms=sorted(tokens.keys.algorithms) if tokens else [],
        client_ca=str(settings.grpc_client_ca_path) if mode.uses_certificates else None,
        registration_rate_per_address=settings.peer_registration_rate_per_address,
        message_rate=settings.peer_message_rate,
        max_unregistered_streams=settings.max_unregistered_streams,
    )
    return Admission.from_settings(settings, now, tokens)


def apply_peer_tls(context: ssl.SSLContext, settings: Settings) -> None:
    """With PEER_AUTH_MODE mtls or mtls_or_token, loads GRPC_CLIENT_CA_PATH into `context`. Client certificates are then *optional* at the TLS layer: one that
    is presented must verify or the handshake fails, and a stream without one is refused by `authorize`
    with UNAUTHENTICATED and a log line, rather than by an anonymous handshake error (and, with
    mtls_or_token, may bring a token instead)."""
    if not AuthMode(settings.peer_auth_mode).uses_certificates:
        return
    accepts = "a readable PEM file of the CA certificates that sign peer certificates (PEER_AUTH_MODE uses mtls)"
    path = settings.grpc_client_ca_path
    if path is None or not path.is_file():
        raise ConfigError("GRPC_CLIENT_CA_PATH", accepts, None if path is None else str(path))
    try:
        context.load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError):
        raise ConfigError("GRPC_CLIENT_CA_PATH", accepts, str(path)) from None
    context.verify_mode = ssl.CERT_OPTIONAL


def warn_if_private_file_is_open(variable: str, path: Path) -> None:
    """Warn (never fail) when a private key or secret file can be read by its group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it will fail with its own clear error
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "private_file_readable_by_others",
            variable=variable,
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
            fix=f"chmod 600 {path}",
        )


def _load_token_policy(settings: Settings, mode: AuthMode) -> TokenPolicy | None:
    if not mode.uses_tokens:
        return None
    hmac_path = settings.peer_token_hmac_secret_path
    ed25519_path = settings.peer_token_ed25519_public_key_path
    if hmac_path is None and ed25519_path is None:
        raise ConfigError(
            "PEER_TOKEN_HMAC_SECRET_PATH",
            f"a file of HS256 secrets (or PEER_TOKEN_ED25519_PUBLIC_KEY_PATH) while PEER_AUTH_MODE is {mode.value}; "
            "`python -m edge certs` writes a development one",
        )
    secrets: tuple[bytes, ...] = ()
    public_keys: tuple[Any, ...] = ()
    if hmac_path is not None:
        secrets = _parse_key_file(
            "PEER_TOKEN_HMAC_SECRET_PATH",
            hmac_path,
            parse_hmac_secrets,
            "a readable file of HS256 secrets, one per line, each at least 32 bytes",
        )
    if ed25519_path is not None:
        public_keys = _parse_key_file(
            "PEER_TOKEN_ED25519_PUBLIC_KEY_PATH",
            ed25519_path,
            parse_ed25519_public_keys,
            "a readable file of PEM Ed25519 public keys",
        )
    return TokenPolicy(
        keys=TokenKeys(hmac_secrets=secrets, ed25519_public_keys=public_keys),
        leeway_sec=settings.peer_token_leeway_sec,
        audience=settings.peer_token_audience or None,
    )


def _parse_key_file(variable: str, path: Path, parse: Callable[[bytes], Any], accepts: str) -> Any:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(variable, f"{accepts} ({error.strerror or 'unreadable'})", str(path)) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(variable, f"{accepts} (at most {MAX_KEY_FILE_BYTES} bytes)", str(path))
    try:
        return parse(data)
    except KeyFileError as error:
        raise ConfigError(variable, f"{accepts} ({error})", str(path)) from None


def _warn_ignored(settings: Settings, mode: AuthMode) -> None:
    ignored: list[str] = []
    if settings.grpc_client_ca_path is not None and not mode.uses_certificates:
        ignored.append("GRPC_CLIENT_CA_PATH")
    if not mode.uses_tokens:
        if settings.peer_token_hmac_secret_path is not None:
            ignored.append("PEER_TOKEN_HMAC_SECRET_PATH")
        if settings.peer_token_ed25519_public_key_path is not None:
            ignored.append("PEER_TOKEN_ED25519_PUBLIC_KEY_PATH")
    for variable in ignored:
        log.warning("peer_auth_setting_ignored", variable=variable, mode=mode.value)
