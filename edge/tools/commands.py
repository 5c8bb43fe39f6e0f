"""The operator tools' subcommands of `python -m edge`: `peer-sim`, `send-command` and `tail`.

`edge.cli` adds them to its parser with `add_tool_commands` and hands a parsed tool command to
`run_tool`. Each tool reads the same settings as the edge (KAFKA_BOOTSTRAP_SERVERS, EDGE_ID, the
topic names), with a few overridable on the command line, and logs library warnings to stderr only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from edge.config import ConfigError, Settings, load_settings
from edge.logs import configure_logging

#: The subcommands this module adds.
TOOL_COMMANDS = ("peer-sim", "send-command", "tail")


def add_tool_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `peer-sim`, `send-command` and `tail` to the command line's subcommands."""
    _add_peer_sim(commands)
    _add_send_command(commands)
    _add_tail(commands)


def run_tool(args: argparse.Namespace) -> int:
    """Run a parsed tool command; its exit code (2 for a setting the tool cannot run with)."""
    if args.command == "peer-sim":
        return _run_peer_sim(args)
    try:
        return _run_send_command(args) if args.command == "send-command" else _run_tail(args)
    except ConfigError as error:
        print(f"edge: configuration error: {error}", file=sys.stderr)
        return 2


EPILOG_PEER_SIM = """\
examples:
  python -m edge peer-sim --ca certs/ca.crt --peers 20            # 20 peers against localhost:50051
  python -m edge peer-sim --no-tls --edge 127.0.0.1:50051 --peers 5 --duration 60
  python -m edge peer-sim --ca certs/ca.crt --edge edge-a:50051,edge-b:50051 --peers 100   # spread over 2 edges
  python -m edge peer-sim --ca certs/ca.crt --peers 10000 --processes 2 --streams-per-connection 50 \\
      --connect-rate 1000 --duration 300 > summary.json           # load: last stdout line is JSON

Peer ids are PREFIX-NNNN (--id-prefix, default "sim"). Each peer sends a token for its id, signed
with the edge's token secret (found as `python -m edge token` finds it) unless --no-token. Progress
goes to stderr every --progress-interval seconds; the final line on stdout is a JSON summary. Ctrl-C
stops the peers gracefully (each half-closes its stream); a second Ctrl-C exits at once. Exit code 0
when every peer registered at least once.

Reconnecting (docs/protocol.md, "Reconnecting"): a peer whose stream or connection ends waits a random
time in [0, min(--reconnect-max, --reconnect-initial * 2^n)] (n: failed attempts since it last
registered) before trying again; after ABORTED (another stream took its peer id) it waits between half
and all of --reconnect-max. Each new connection goes to the next --edge address (or a random one).

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
    sim.add_argument(
        "--edge",
        "--target",
        dest="edges",
        action="append",
        help="edge gRPC address host:port; repeat it or give a comma list to spread peers over several edges "
        "(default: localhost:50051)",
    )
    sim.add_argument(
        "--edge-choice",
        choices=("round-robin", "random"),
        default="round-robin",
        help="address of each new connection: the next one in turn, or a random one (default: round-robin)",
    )
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
    sim.add_argument(
        "--reconnect-initial",
        type=_positive_float,
        default=0.5,
        help="first reconnect delay ceiling in seconds; doubles per failed attempt, full jitter (default: 0.5)",
    )
    sim.add_argument(
        "--reconnect-max", type=_positive_float, default=30.0, help="reconnect delay cap in seconds (default: 30)"
    )
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


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number, 0 to 65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a whole number above 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a number of seconds above 0")
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
    from edge.tools.peer_sim import SimConfig
    from edge.tools.peer_sim_cli import run_cli

    edges: list[Address] = []
    for text in [part for value in args.edges or ["localhost:50051"] for part in value.split(",") if part.strip()]:
        try:
            edges.append(Address.parse(text))
        except ValueError:
            print(f"peer-sim: --edge must be host:port, got {text!r}", file=sys.stderr)
            return 2
    if not edges:
        print("peer-sim: --edge names no address", file=sys.stderr)
        return 2
    if args.reconnect_max < args.reconnect_initial:
        print("peer-sim: --reconnect-max must be at least --reconnect-initial", file=sys.stderr)
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
        host=edges[0].host,
        port=edges[0].port,
        edges=tuple((edge.host, edge.port) for edge in edges),
        edge_choice=args.edge_choice,
        reconnect_initial=args.reconnect_initial,
        reconnect_max=args.reconnect_max,
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
