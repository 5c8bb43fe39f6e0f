"""Abuse limits as small pure values: token buckets fed with Trio time, no I/O, no event loop.

Three limits protect the peer port (each a setting, see docs/security.md):

* `AddressThrottle`: new `Connect` streams per second per source address (PEER_REGISTRATION_RATE_PER_ADDRESS,
  burst PEER_REGISTRATION_BURST_PER_ADDRESS), keyed by `edge.grpc.connection_limits.address_key` (IPv4
  whole, IPv6 by its /64). The table of buckets is bounded (least recently used address forgotten first).
* `UnregisteredStreams`: streams that have not proven an identity yet, over the whole edge
  (MAX_UNREGISTERED_STREAMS), with a fair share per source address.
* `MessageMeter`: messages per second from one peer's stream, counted by the transport as they arrive
  (PEER_MESSAGE_RATE, burst PEER_MESSAGE_BURST).

Every method takes `now` (seconds, `trio.current_time()` in the edge) so tests drive them with plain numbers.
"""

from __future__ import annotations

import collections
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


#: The fewest streams waiting to register that any source address may hold, however many addresses share
#: MAX_UNREGISTERED_STREAMS (a peer host with several peers behind it registers them at once).
MIN_UNREGISTERED_SHARE: Final = 8

#: Why `UnregisteredStreams.enter` said no.
OVER_SHARE: Final = "unregistered_share"
FULL: Final = "unregistered_streams_full"


@attrs.frozen
class EntryVerdict:
    admitted: bool
    #: Admitted by displacing one waiting stream of this address (the caller ends that stream).
    displace: str | None = None
    #: Not admitted: OVER_SHARE or FULL.
    refused: str | None = None


@attrs.define
class UnregisteredStreams:
    """Streams that have not proven an identity yet (MAX_UNREGISTERED_STREAMS), over the whole edge and per
    source address key, so that a few addresses cannot hold every place and lock new peers out.

    * An address may hold at most its share: max(MIN_UNREGISTERED_SHARE, limit // (addresses + 1)), where
      `addresses` are those holding a place, the asking one included; the + 1 keeps a share free for an
      address not seen yet. Over it: refused (OVER_SHARE).
    * The shares shrink as addresses arrive, so the first ones may hold more than today's share and fill
      the cap. A stream that finds it full is admitted by displacing the oldest waiting stream of the
      address that holds most, if that address holds more than the asking one; otherwise refused (FULL).

    Key None (no TCP peer: an in-memory stream) counts against the cap only.
    """

    limit: int
    min_share: int = MIN_UNREGISTERED_SHARE
    count: int = 0
    _held: dict[str, int] = attrs.field(factory=dict, init=False)

    def share(self, key: str | None = None) -> int:
        addresses = len(self._held) + (0 if key is None or key in self._held else 1)
        return max(self.min_share, self.limit // (addresses + 1))

    def held_by(self, key: str) -> int:
        return self._held.get(key, 0)

    def enter(self, key: str | None = None) -> EntryVerdict:
        held = 0 if key is None else self._held.get(key, 0)
        if key is not None and held >= self.share(key):
            return EntryVerdict(False, refused=OVER_SHARE)
        displace = None
        if self.count >= self.limit:
            top = max(self._held, key=self._held.__getitem__, default=None)
            if top is None or top == key or self._held[top] <= held:
                return EntryVerdict(False, refused=FULL)
            displace = top
            self.leave(top)
        self.count += 1
        if key is not None:
            self._held[key] = held + 1
        return EntryVerdict(True, displace=displace)

    def try_enter(self, key: str | None = None) -> bool:
        return self.enter(key).admitted

    def leave(self, key: str | None = None) -> None:
        if self.count > 0:
            self.count -= 1
        if key is not None and key in self._held:
            if self._held[key] > 1:
                self._held[key] -= 1
            else:
                del self._held[key]

    @property
    def addresses(self) -> int:
        return len(self._held)


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
