"""Commands follow their peer: what to do with a command for a peer this edge does not hold.

Pure decisions over the presence view (edge.presence), tested without an event loop; the router acts
on them (docs/scaling.md#addressing-commands):

    Forward(edge_id)   presence says another edge holds the peer, and the command has hops left:
                       produce it to that edge's command topic (`forwarded_record`), with `hops` one
                       more and `forwarded_from` this edge; its offset settles when the broker has
                       acknowledged the copy (at least once, end to end)
    Wait(until_ms)     the peer was connected moments ago (its session ended, here or on another
                       edge, or this edge restarted while presence still says it holds it): retry
                       without running out of retries until COMMAND_PEER_GRACE_SEC after it went
    None               the usual rules: retried, held until `expires_at`, or dead-lettered

A command's `hops` (a whole number, 0 when missing) counts the forwards so far; at COMMAND_MAX_HOPS it
is not forwarded again. A `hops` that is not a whole number 0 or more counts as the limit (never
forwarded), so a malformed field cannot make a command travel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from edge.kafka.commands import Command
from edge.presence import Holder
from edge.records import OutboundRecord


@attrs.frozen
class Forward:
    edge_id: str


@attrs.frozen
class Wait:
    until_ms: int


Decision = Forward | Wait | None


def hops_of(original: Any) -> int | None:
    """The command's `hops` (0 when missing), or None when it is not a whole number 0 or more."""
    if not isinstance(original, Mapping):
        return None
    hops = original.get("hops", 0)
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        return None
    return hops


def decide(
    holder: Holder | None,
    *,
    edge_id: str,
    hops: int | None,
    max_hops: int,
    now_ms: int,
    grace_ms: int,
    started_ms: int,
) -> Decision:
    """What to do with a command for a peer that has no live session on this edge (`edge_id`).

    `holder`: what presence knows of the peer; `started_ms`: when this edge started (a peer presence
    says is here, with no session here, was lost in a restart or is just leaving: it went then at
    the earliest).
    """
    if holder is None:
        return None
    if holder.connected and holder.edge_id != edge_id:
        if hops is not None and hops < max_hops:
            return Forward(holder.edge_id)
        return None
    gone_ms = holder.at_ms if not holder.connected else max(holder.at_ms, started_ms)
    if now_ms < gone_ms + grace_ms:
        return Wait(gone_ms + grace_ms)
    return None


def forwarded_record(
    command: Command,
    *,
    topic: str,
    edge_id: str,
    hops: int,
    on_ack: Callable[[], None] | None = None,
) -> OutboundRecord:
    """The copy of `command` for the holding edge's topic: the original JSON, its `request_id` (a
    generated one is kept, so the peer and every dead letter see one id), `hops` + 1, and
    `forwarded_from` this edge. Keyed by the peer id, like every command."""
    value: dict[str, Any] = dict(command.original) if isinstance(command.original, Mapping) else {}
    value.update(request_id=command.request_id, hops=hops + 1, forwarded_from=edge_id)
    return OutboundRecord(topic, command.peer_id, value, on_ack=on_ack)
