"""Abuse limits as small pure values: token buckets fed with Trio time, no I/O, no event loop.

Three limits protect the peer port (each a setting, see docs/security.md):

* `AddressThrottle`: new `Connect` streams per second per source address (PEER_REGISTRATION_RATE_PER_ADDRESS,
  burst PEER_REGISTRATION_BURST_PER_ADDRESS). IPv4 addresses are keyed whole, IPv6 by their /64 (one
  household or server usually owns a whole /64, so keying single IPv6 addresses would be no limit at all).
  The table of buckets is bounded (least recently used address forgotten first).
* `UnregisteredStreams`: streams that have not proven an identity yet, over the whole edge
  (MAX_UNREGISTERED_STREAMS).
* `MessageMeter`: messages per second from one peer's stream, counted by the transport as they arrive
  (PEER_MESSAGE_RATE, burst PEER_MESSAGE_BURST).

Every method takes `now` (seconds, `trio.current_time()` in the edge) so tests drive them with plain numbers.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Callable
from functools import partial
from typing import Final

import attrs

#: Source addresses whose buckets are remembered at once. Beyond it the least recently seen address is
#: forgotten (its next stream starts with a full bucket): about 200 bytes each, so about 13 MB at most.
MAX_TRACKED_ADDRESSES: Final = 65536


@attrs.define
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one token per event.

    `grant(seconds, until)` adds a *credit* of `seconds x rate` tokens, spent after the ordinary ones
    and not capped by the burst, that lapses at `until`: the message meter grants it for time the edge
    itself held a peer back (Kafka backpressure), so a peer that kept to its rate while we stalled is not
    punished for the backlog we made it build, and the ordinary tokens keep refilling meanwhile.
    """

    rate: float
    burst: float
    tokens: float
    updated: float
    credit: float = 0.0
    credit_until: float = 0.0

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=burst, updated=now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.credit and now > self.credit_until:
            self.credit = 0.0

    def grant(self, seconds: float, until: float) -> None:
        if seconds > 0:
            self.credit += seconds * self.rate
            self.credit_until = max(self.credit_until, until)

    def take(self, now: float) -> bool:
        """Spend one token if there is one: an ordinary one first (so they keep refilling while a
        backlog is taken), then credit."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        if self.credit >= 1.0:
            self.credit -= 1.0
            return True
        return False

    def is_full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.burst


def address_key(host: str | None) -> str | None:
    """The throttling key of a source address: IPv4 whole, IPv6 by /64, IPv4-mapped IPv6 as IPv4.
    None (no TCP peer, e.g. an in-memory test stream) is never throttled."""
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


@attrs.frozen
class ThrottleVerdict:
    allowed: bool
    #: The first refusal after this address was last allowed (log it once, not per stream).
    episode_started: bool = False
    #: On the first allowed stream after refusals: how many were refused in that episode.
    episode_refused: int = 0


@attrs.define
class _AddressState:
    bucket: TokenBucket
    refused: int = 0


@attrs.define
class AddressThrottle:
    """New streams per second per source address. `rate` 0 turns the throttle off."""

    rate: float
    burst: int
    max_addresses: int = MAX_TRACKED_ADDRESSES
    _states: collections.OrderedDict[str, _AddressState] = attrs.field(
        factory=collections.OrderedDict, init=False
    )

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._states)

    def attempt(self, key: str | None, now: float) -> ThrottleVerdict:
        """Count one new stream from `key` (see `address_key`) and say whether it may go on."""
        if key is None or not self.enabled:
            return ThrottleVerdict(True)
        state = self._states.get(key)
        if state is None:
            state = _AddressState(TokenBucket.full(self.rate, self.burst, now))
            self._states[key] = state
            while len(self._states) > self.max_addresses:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        if state.bucket.take(now):
            refused, state.refused = state.refused, 0
            return ThrottleVerdict(True, episode_refused=refused)
        state.refused += 1
        return ThrottleVerdict(False, episode_started=state.refused == 1)


@attrs.define
class UnregisteredStreams:
    """Streams that are still in their handshake (no identity proven yet), over the whole edge."""

    limit: int
    count: int = 0

    def try_enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        if self.count > 0:
            self.count -= 1


@attrs.define
class MessageMeter:
    """Inbound messages of one stream (one peer), counted as they arrive: an
    `edge.grpc.InboundMeter`, made per stream by the transport (GrpcServerConfig.message_meter).

    Time the edge held the stream back (its queue full because the session was waiting, e.g. on Kafka
    backpressure) is granted as credit when the hold ends (see TokenBucket.grant), so a peer that kept to
    its rate is not cut off for the backlog the edge's own stall made it build.
    """

    bucket: TokenBucket
    accepted: int = 0
    _held_since: float | None = None

    @classmethod
    def start(cls, rate: float, burst: int, now: float) -> MessageMeter:
        return cls(TokenBucket.full(rate, burst, now))

    def message(self, now: float) -> bool:
        if self.bucket.take(now):
            self.accepted += 1
            return True
        return False

    def held(self, now: float) -> None:
        if self._held_since is None:
            self._held_since = now

    def released(self, now: float) -> None:
        """The hold's length, at the rate, becomes a credit; the backlog it built must arrive within
        another such length (it normally comes at once)."""
        if self._held_since is not None:
            held = now - self._held_since
            self.bucket.grant(held, until=now + held)
            self._held_since = None

    def exceeded_message(self) -> str:
        return f"more than {self.bucket.rate:g} messages per second (burst {self.bucket.burst:g}): slow down"


def message_meter_factory(rate: float, burst: int) -> Callable[[float], MessageMeter]:
    """What the transport calls, with the stream's start time, to meter each new stream."""
    return partial(MessageMeter.start, rate, burst)
