"""`python -m edge send-command`: put one command for a peer on an edge's command topic.

`build_command` (pure) checks the command against docs/protocol.md#commands before anything is sent, so an
operator's typo is an error message here, not a dead letter later; `--raw` skips the checks and sends
the given JSON (or text) as the whole record value, to try the edge's dead-letter handling.
"""

from __future__ import annotations

import argparse
import datetime
import json
import uuid
from typing import Any, Final, TextIO

from edge.config import Settings
from edge.convert import timestamp

#: command_type -> its command_data fields and their JSON types (docs/protocol.md#commands).
COMMAND_FIELDS: Final[dict[str, dict[str, type | tuple[type, ...]]]] = {
    "file_delete": {"catalog_uuids": list},
    "file_hash": {"catalog_uuid": str, "hash_types": list},
    "file_remap": {"old_catalog_uuid": str, "new_catalog_uuid": str},
    "screenshot_capture": {"catalog_uuid": str, "quantity": int, "upload_token": str, "upload_endpoint": str},
    "batch_file_offer_response": {"files": list},
}


class CommandError(ValueError):
    """The command is not one the edge would accept; the message says why."""


def build_command(
    peer_id: str,
    command_type: str,
    data_text: str,
    *,
    request_id: str | None,
    expires_at: datetime.datetime | None,
) -> dict[str, Any]:
    """The command record's JSON value, or CommandError naming what is wrong."""
    if command_type not in COMMAND_FIELDS:
        raise CommandError(f"unknown command_type {command_type!r}; one of: {', '.join(COMMAND_FIELDS)}")
    try:
        data = json.loads(data_text)
    except ValueError as error:
        raise CommandError(f"--data is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise CommandError("--data must be a JSON object")
    for name, expected in COMMAND_FIELDS[command_type].items():
        if name not in data:
            raise CommandError(f"{command_type} needs command_data.{name}")
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            kind = {list: "a list", str: "a string", int: "an integer"}[expected]  # type: ignore[index]
            raise CommandError(f"command_data.{name} must be {kind}")
        if isinstance(value, list) and command_type != "batch_file_offer_response" and not all(isinstance(v, str) for v in value):
            raise CommandError(f"command_data.{name} must be a list of strings")
    command: dict[str, Any] = {
        "peer_id": peer_id,
        "command_type": command_type,
        "command_data": data,
        "request_id": request_id or str(uuid.uuid4()),
    }
    if expires_at is not None:
        command["expires_at"] = timestamp(expires_at)
    return command


async def send_command_cli(settings: Settings, args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    from edge.kafka.tools import send_record

    topic = args.topic or settings.commands_topic
    if args.raw:
        value = args.data.encode("utf-8")
        request_id = None
    else:
        expires_at = None
        if args.expires_in is not None:
            expires_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=args.expires_in)
        try:
            command = build_command(
                args.peer_id, args.command_type, args.data, request_id=args.request_id, expires_at=expires_at
            )
        except CommandError as error:
            print(f"send-command: {error}", file=err)
            return 2
        value = json.dumps(command, separators=(",", ":")).encode("utf-8")
        request_id = command["request_id"]
    try:
        partition, offset = await send_record(
            settings.kafka_bootstrap_servers, topic, args.peer_id.encode("utf-8"), value, timeout=args.timeout
        )
    except Exception as error:  # noqa: BLE001 - any failure is reported on one line
        print(f"send-command: could not send to {topic} at {settings.kafka_bootstrap_servers}: {type(error).__name__}: {error}", file=err)
        return 1
    print(
        json.dumps(
            {"sent": args.command_type, "peer_id": args.peer_id, "request_id": request_id, "topic": topic, "partition": partition, "offset": offset}
        ),
        file=out,
    )
    return 0
