"""Connection-level limits of the peer port, as small pure values (no I/O, no Trio).

* `address_key`: what a source address counts as: IPv4 whole, IPv6 by its /64 (one household or server
  usually owns a whole /64, so counting single IPv6 addresses would be no limit at all), IPv4-mapped
  IPv6 as IPv4.
* `ConnectionCounts`: open connections in total and per address key; the accept loop (`listeners.py`)
  asks it before a socket gets a task, and closes the socket at once when it says no.

Refusal causes are the `cause` label values of `giggityflix_edge_connections_refused_total`
(`refusals.py`).
"""

from __future__ import annotations

import ipaddress
from typing import Final

import attrs

#: Cause: the edge already holds GRPC_MAX_CONNECTIONS connections.
MAX_CONNECTIONS: Final = "max_connections"
#: Cause: the source address (IPv6: its /64) already holds GRPC_MAX_CONNECTIONS_PER_ADDRESS connections.
MAX_CONNECTIONS_PER_ADDRESS: Final = "max_connections_per_address"


def address_key(host: str | None) -> str | None:
    """The counting key of a source address (see the module docstring). None stays None: a stream with
    no TCP peer (an in-memory test stream) is never limited by address."""
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.define
class ConnectionCounts:
    """Open connections, in total and per address key. `max_per_address` 0: no per-address limit.

    The table holds one entry per address key with an open connection, so it is bounded by `max_total`.
    """

    max_total: int
    max_per_address: int = 0
    total: int = 0
    _per_address: dict[str, int] = attrs.field(factory=dict, init=False)

    def admit(self, key: str | None) -> str | None:
        """Count one new connection from `key`: None if it may go on, else why not (a cause)."""
        if self.total >= self.max_total:
            return MAX_CONNECTIONS
        if key is not None:
            held = self._per_address.get(key, 0)
            if self.max_per_address and held >= self.max_per_address:
                return MAX_CONNECTIONS_PER_ADDRESS
            self._per_address[key] = held + 1
        self.total += 1
        return None

    def release(self, key: str | None) -> None:
        """One admitted connection from `key` has closed."""
        self.total = max(0, self.total - 1)
        if key is None:
            return
        held = self._per_address.get(key, 0) - 1
        if held > 0:
            self._per_address[key] = held
        else:
            self._per_address.pop(key, None)

    def held_by(self, key: str) -> int:
        return self._per_address.get(key, 0)

    @property
    def addresses(self) -> int:
        """Address keys with at least one open connection."""
        return len(self._per_address)
