"""`python -m edge tail`: follow the edge's topics and print each record readably or as JSON lines.

`resolve_topics` maps the groups an operator thinks in (lifecycle, catalog, responses, deadletter,
commands) to the topic names of the settings; `format_record` (pure) renders one record on one line.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
from typing import Any, Final, TextIO

import trio

from edge.config import Settings
from edge.kafka.tools import TailRecord

#: Envelope fields every record carries; the readable form shows them once, up front.
_ENVELOPE: Final = ("peer_id", "edge_id", "timestamp")


def resolve_topics(settings: Settings, spec: str) -> list[str]:
    groups = {
        "lifecycle": [settings.kafka_peer_lifecycle_events_topic],
        "catalog": [settings.kafka_peer_catalog_updates_topic],
        "responses": [
            settings.kafka_file_delete_responses_topic,
            settings.kafka_file_hash_responses_topic,
            settings.kafka_file_remap_responses_topic,
            settings.kafka_screenshot_capture_responses_topic,
        ],
        "deadletter": [settings.deadletter_topic],
        "commands": [settings.commands_topic],
    }
    topics: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        for topic in groups.get(item, [item]):
            if topic not in topics:
                topics.append(topic)
    return topics


def decode_value(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value.decode("utf-8", "replace")


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_record(record: TailRecord) -> str:
    """One readable line: time, topic[partition]@offset, key, then the record's own fields."""
    value = decode_value(record.value)
    when = datetime.datetime.fromtimestamp(record.timestamp_ms / 1000, datetime.timezone.utc)
    head = f"{when.strftime('%H:%M:%S.%f')[:-3]}  {record.topic}[{record.partition}]@{record.offset}"
    key = record.key.decode("utf-8", "replace") if record.key is not None else "-"
    if not isinstance(value, dict):
        return f"{head}  {key}  {_short(value, 200)}"
    fields = dict(value)
    for name in _ENVELOPE:
        fields.pop(name, None)
    screenshot = fields.get("screenshot")
    if isinstance(screenshot, dict) and isinstance(screenshot.get("screenshot"), str):
        size = len(base64.b64decode(screenshot["screenshot"], validate=False))
        fields["screenshot"] = {**screenshot, "screenshot": f"<{size} bytes>"}
    lead = next((str(fields.pop(n)) for n in ("event_type", "update_type", "command_type", "reason") if n in fields), "")
    rest = "  ".join(f"{name}={_short(item)}" for name, item in fields.items())
    return f"{head}  {key}  {lead}  {rest}".rstrip()


def record_json(record: TailRecord) -> str:
    return json.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp_ms,
            "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
            "value": decode_value(record.value),
        },
        ensure_ascii=False,
    )


async def tail_cli(settings: Settings, args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    from edge.kafka.tools import open_tail

    topics = resolve_topics(settings, args.topics)
    if not topics:
        print("tail: no topics", file=err)
        return 2
    peer = args.peer.encode("utf-8") if args.peer else None
    printed = 0
    failures: list[Exception] = []
    print(f"tail: following {', '.join(topics)} at {settings.kafka_bootstrap_servers} (Ctrl-C to stop)", file=err, flush=True)

    async def follow(scope: trio.CancelScope) -> None:
        nonlocal printed
        async with open_tail(settings.kafka_bootstrap_servers, topics, from_beginning=args.from_beginning) as fetch:
            while args.count is None or printed < args.count:
                for record in await fetch():
                    if peer is not None and record.key != peer:
                        continue
                    print(record_json(record) if args.json else format_record(record), file=out, flush=True)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        break
        scope.cancel()

    with trio.move_on_after(args.timeout if args.timeout is not None else float("inf")):
        try:
            with trio.open_signal_receiver(*_stop_signals()) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
                    await follow(nursery.cancel_scope)
        except* Exception as group:  # noqa: BLE001 - the one boundary: Kafka unreachable and the like
            failures = leaves(group)
    if failures:
        for line in failure_lines(settings.kafka_bootstrap_servers, failures):
            print(line, file=err)
        return 1
    if args.count is not None and printed < args.count:
        print(f"tail: {printed} of {args.count} records", file=err)
        return 1
    return 0


def leaves(group: ExceptionGroup[Exception]) -> list[Exception]:
    """Every exception in `group`, nested groups opened, in order: each one is reported."""
    found: list[Exception] = []
    for error in group.exceptions:
        found.extend(leaves(error) if isinstance(error, ExceptionGroup) else [error])
    return found


def failure_lines(bootstrap: str, failures: list[Exception]) -> list[str]:
    """What tail prints when it stops on errors: one line per error."""
    return [f"tail: Kafka at {bootstrap}: {type(error).__name__}: {error}" for error in failures]


def _stop_signals() -> tuple[int, ...]:
    import signal

    return (signal.SIGINT, signal.SIGTERM)


async def _cancel_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return
