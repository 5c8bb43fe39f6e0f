"""How a peer comes back after its stream or connection ends: pure, no I/O, no clock.

The rules peer implementers should follow (docs/protocol.md, "Reconnecting"), as `peer-sim` follows them:

- Capped exponential backoff with full jitter: before attempt n (0 after a successful registration)
  wait a uniform random time in [0, min(cap, initial * 2**n)]. Full jitter spreads thousands of peers
  that lost the same edge at the same moment over the whole window, so they do not come back in step.
- A session that registered resets n: an edge that restarts gets its peers back within `initial`.
- ABORTED means another stream registered this peer id (reason `replaced`). A peer's own newer stream
  makes the old one moot (nothing to do); if the peer has no other stream, another process is using
  its id, and reconnecting at once would take the session back and start a takeover loop. So it waits
  at least half the cap (uniform in [cap/2, cap]) and stays at the cap until it registers again.
- Every other ending (UNAVAILABLE from a draining edge, a lost connection, RESOURCE_EXHAUSTED from a
  full edge, a failed registration) takes the next backoff step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Final

import attrs

INITIAL_SEC: Final = 0.5
CAP_SEC: Final = 30.0
MULTIPLIER: Final = 2.0
#: The gRPC status of a stream that another stream for the same peer id replaced.
REPLACED_STATUS: Final = "ABORTED"
#: How the next edge address is chosen for each new connection.
EDGE_CHOICES: Final = ("round-robin", "random")


@attrs.define
class Backoff:
    """Capped exponential backoff with full jitter; `random` returns a float in [0, 1)."""

    initial: float = INITIAL_SEC
    cap: float = CAP_SEC
    multiplier: float = MULTIPLIER
    random: Callable[[], float] = random.random
    #: Attempts since the last reset; stops growing once the ceiling reaches the cap.
    attempt: int = 0

    def ceiling(self) -> float:
        """The largest delay the next attempt can draw."""
        return min(self.cap, self.initial * self.multiplier**self.attempt)

    def next_delay(self) -> float:
        """A delay for the next attempt, in [0, ceiling()]; the ceiling then grows."""
        delay = self.random() * self.ceiling()
        if self.ceiling() < self.cap:
            self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    def after_session(self, status: str | None, registered: bool) -> float:
        """The delay before the next attempt after a stream ended with `status` (a gRPC status name,
        None when the connection was lost without one), `registered` telling if it got that far."""
        if status == REPLACED_STATUS:
            while self.ceiling() < self.cap:
                self.attempt += 1
            return self.cap / 2 + self.random() * self.cap / 2
        if registered:
            self.reset()
        return self.next_delay()


@attrs.define
class EdgeChooser:
    """The address of each new connection: round-robin from `start`, or uniformly at random."""

    addresses: Sequence[tuple[str, int]]
    mode: str = "round-robin"
    start: int = 0
    random: Callable[[], float] = random.random
    _next: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("at least one edge address is needed")
        if self.mode not in EDGE_CHOICES:
            raise ValueError(f"mode must be one of {', '.join(EDGE_CHOICES)}, not {self.mode!r}")
        self._next = self.start % len(self.addresses)

    def choose(self) -> tuple[str, int]:
        if self.mode == "random":
            return self.addresses[min(int(self.random() * len(self.addresses)), len(self.addresses) - 1)]
        address = self.addresses[self._next]
        self._next = (self._next + 1) % len(self.addresses)
        return address
