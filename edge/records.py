"""What flows from peer sessions to the Kafka bridge: one `OutboundRecord` per Kafka record.

The session decides topic, key and JSON value (pure functions in `edge.peers.protocol`); the bridge
only serialises and produces. Keeping the value a plain JSON-ready mapping means the bridge never
needs to know what a record means.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs


class DisconnectReason(str, enum.Enum):
    """Why a peer session ended, as published in `disconnected` events."""

    STREAM_CLOSED = "stream_closed"
    TIMEOUT = "timeout"
    REPLACED = "replaced"
    SHUTDOWN = "shutdown"
    PROTOCOL_ERROR = "protocol_error"
    ERROR = "error"


#: json.dumps with options other than its defaults builds a new JSONEncoder per call; this one is built
#: once (it holds no state between calls).
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_json(value: Any) -> bytes:
    """The one JSON encoding of record values: compact, UTF-8, non-ASCII kept as is."""
    return _JSON.encode(value).encode("utf-8")


@attrs.frozen
class OutboundRecord:
    """One record to produce. `key` is the peer id (None only for dead letters of unknown peers).

    `on_ack`, if given, is called by the producer once the broker has acknowledged the record
    (acks=all), never before and never for a record that was not produced. The command path uses it
    to commit a dead-lettered command's offset only once its dead letter is safely in Kafka. It must
    not block or raise.

    `encoded` and `size` are computed on first use (by `send_event`, which counts the record against the
    event buffer's byte budget) and kept: the producer sends those same bytes, a record is encoded once.
    """

    topic: str
    key: str | None
    value: Mapping[str, Any]
    on_ack: Callable[[], None] | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)

    def encode_key(self) -> bytes | None:
        return None if self.key is None else self.key.encode("utf-8")

    def encode_value(self) -> bytes:
        return encode_json(self.value)

    @functools.cached_property
    def encoded(self) -> tuple[bytes | None, bytes]:
        """Key and value as produced. Raises TypeError or ValueError if the value cannot be encoded
        (nothing is kept then: the producer asks again, and rejects the record)."""
        return self.encode_key(), self.encode_value()

    @functools.cached_property
    def size(self) -> int:
        """Bytes of the encoded key and value: what the record weighs in the event buffer
        (KAFKA_EVENT_BUFFER_BYTES). 0 for a record that cannot be encoded (the producer rejects it)."""
        try:
            key, value = self.encoded
        except (TypeError, ValueError):
            return 0
        return len(value) + (0 if key is None else len(key))
