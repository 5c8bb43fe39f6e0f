"""`ConnectionSlots`: who may hold a connection to the ops HTTP port, as a pure table (no I/O, no Trio).

A liveness probe that cannot connect restarts the pod and drops every peer, so the port must answer
while hundreds of clients hold connections open doing nothing (slowloris). Refusing the newest
connection when the table is full would refuse the probe; so a new connection *takes* a slot instead:

* from an address (IPv6: its /64) already holding `max_per_address`: that address's oldest evictable
  connection is closed for it (a flood from one address only ever displaces itself);
* else, with `max_total` open: the oldest evictable connection of any address is closed for it;
* refused only when every candidate is busy (answering a request, for less than `busy_grace` seconds).

A connection is evictable while it waits for a request (idle, or its head arriving slowly), and once
it has been busy for `busy_grace` seconds (a client that does not read its response). The shell
(edge.ops.http) closes what `open` names and keeps each slot's state up to date.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs


@attrs.define(eq=False)
class Slot:
    key: str | None
    opened: float
    #: When the request being answered arrived; None while waiting for one.
    busy_since: float | None = None
    #: The shell's handle to close the connection by (its cancel scope).
    handle: Any = None


@attrs.define
class ConnectionSlots:
    max_total: int
    max_per_address: int
    busy_grace: float
    _slots: dict[Slot, None] = attrs.field(factory=dict, init=False)  # oldest first
    _per_address: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    def __len__(self) -> int:
        return len(self._slots)

    def held_by(self, key: str) -> int:
        return self._per_address[key]

    def open(self, key: str | None, now: float) -> tuple[Slot | None, list[Slot]]:
        """A new connection from `key`: its slot (None: refused) and the slots to close to make room
        (already removed from the table)."""
        victim: Slot | None = None
        if key is not None and self._per_address[key] >= self.max_per_address:
            victim = self._oldest_evictable(now, key)
            if victim is None:
                return None, []
        elif len(self._slots) >= self.max_total:
            victim = self._oldest_evictable(now, None)
            if victim is None:
                return None, []
        if victim is not None:
            self.close(victim)
        slot = Slot(key, now)
        self._slots[slot] = None
        if key is not None:
            self._per_address[key] += 1
        return slot, [] if victim is None else [victim]

    def close(self, slot: Slot) -> None:
        """`slot`'s connection is gone (or is being closed): its place is free. Idempotent."""
        if slot not in self._slots:
            return
        del self._slots[slot]
        if slot.key is not None:
            self._per_address[slot.key] -= 1
            if self._per_address[slot.key] <= 0:
                del self._per_address[slot.key]

    def _oldest_evictable(self, now: float, key: str | None) -> Slot | None:
        for slot in self._slots:
            if key is not None and slot.key != key:
                continue
            if slot.busy_since is None or now - slot.busy_since >= self.busy_grace:
                return slot
        return None
