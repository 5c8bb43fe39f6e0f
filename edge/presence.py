"""Presence: which edge holds which peer, and the epochs that order a peer's sessions fleet-wide.

Both sides of the edge use it and neither owns it, so it sits below both (like edge.handoff):

    next_epoch(now_ms, seen)     the hybrid-logical-clock rule: max(wall-clock ms, highest seen + 1)
    epoch_ms(datetime)           the wall clock in the milliseconds epochs are made of
    presence_entry(value)        a lifecycle record's JSON value -> (peer id, Holder), or None
    PresenceView                 peer id -> the newest Holder seen, bounded (PRESENCE_MAX_PEERS)

The view is filled from Kafka (the compacted presence topic, read from its beginning by every edge,
see edge.kafka.presence) and from this edge's own registrations the moment they are numbered, so a
quick re-registration on the same edge never reuses an epoch. Pure: no I/O, no time of its own (the
caller passes wall-clock milliseconds), tested without an event loop.

Order. A peer's sessions are ordered by `(epoch, edge_id)`: epochs only tie when two edges number a
session of the same peer in the same millisecond without having seen each other's, and then the edge
id decides, the same way on every edge. Within one session, `disconnected` comes after `connected`.

Bound and eviction. At `max_entries` the least recently *updated* peer is forgotten (a dict keeps
update order: an update moves the peer to the end). Forgetting a peer costs little: its next epoch
falls back to the wall clock (still ordered unless clocks are skewed by more than the time between
its sessions), and a command for it is treated as for an unknown peer (retried, held or
dead-lettered by the usual rules, not forwarded).
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import attrs


def epoch_ms(moment: datetime.datetime) -> int:
    """Wall-clock milliseconds since the Unix epoch: the unit of epochs and presence times."""
    return int(moment.timestamp() * 1000)


def next_epoch(now_ms: int, seen: int | None) -> int:
    """The epoch of a new session: the wall clock in ms, or one more than the highest epoch seen for
    the peer if that is higher (a clock behind, or two sessions within one millisecond)."""
    return now_ms if seen is None or seen < now_ms else seen + 1


@attrs.frozen(slots=True, weakref_slot=False)
class Holder:
    """One session of a peer as presence knows it. `at_ms`: wall-clock ms of its last record."""

    edge_id: str
    epoch: int
    session_id: str
    connected: bool
    at_ms: int

    def order(self) -> tuple[int, str, bool]:
        """Sort key: a higher epoch (then edge id) is newer; a session's `disconnected` follows its
        `connected`."""
        return (self.epoch, self.edge_id, not self.connected)


def presence_entry(value: Mapping[str, Any], at_ms: int) -> tuple[str, Holder] | None:
    """The (peer id, Holder) a lifecycle record says, or None for anything else (ignored, so a record
    this edge cannot read never stops presence). `at_ms`: the record's timestamp."""
    peer_id = value.get("peer_id")
    edge_id = value.get("edge_id")
    epoch = value.get("epoch")
    session_id = value.get("session_id")
    event = value.get("event_type")
    if not (
        isinstance(peer_id, str)
        and isinstance(edge_id, str)
        and isinstance(session_id, str)
        and isinstance(epoch, int)
        and not isinstance(epoch, bool)
        and event in ("connected", "disconnected")
    ):
        return None
    return peer_id, Holder(sys.intern(edge_id), epoch, session_id, event == "connected", at_ms)


@attrs.define
class PresenceView:
    """Peer id -> the newest Holder seen for it, at most `max_entries` peers (see the module docstring)."""

    max_entries: int
    _holders: dict[str, Holder] = attrs.field(factory=dict, init=False)
    #: Peers forgotten to stay within the bound, for the metric and the log.
    evicted: int = attrs.field(default=0, init=False)

    def get(self, peer_id: str) -> Holder | None:
        return self._holders.get(peer_id)

    def __len__(self) -> int:
        return len(self._holders)

    def __iter__(self) -> Iterator[str]:
        return iter(self._holders)

    def highest_epoch(self, peer_id: str) -> int | None:
        holder = self._holders.get(peer_id)
        return None if holder is None else holder.epoch

    def apply(self, peer_id: str, holder: Holder) -> bool:
        """Keep `holder` if it is newer than what is known of the peer (see `Holder.order`); stale
        and repeated records change nothing. Returns whether the view changed."""
        current = self._holders.get(peer_id)
        if current is not None:
            if holder.order() <= current.order():
                return False
            del self._holders[peer_id]  # re-inserted at the end: most recently updated
        elif len(self._holders) >= self.max_entries:
            del self._holders[next(iter(self._holders))]
            self.evicted += 1
        self._holders[peer_id] = holder
        return True
