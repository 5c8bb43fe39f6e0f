"""Command delivery backoff: how long retry n waits (docs/protocol.md#retries-and-backoff).
Pure, no clock, no loop.

    retry n (from 0) waits  min(RETRY_INITIAL_DELAY_MS * 2**n, RETRY_MAX_DELAY_MS) * (1 + RETRY_JITTER_FACTOR * u)

with u uniform in [0, 1) drawn from an injected random source, so a seeded `random.Random(seed).random`
gives an exact, testable sequence. The base delay is computed in whole milliseconds (integers, no
overflow for a command held through thousands of retries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import attrs

from edge.config import Settings

#: Past this exponent the doubling is certainly above any cap; it keeps the integers small.
_MAX_EXPONENT: Final = 62

#: A source of u, uniform in [0, 1): `random.random`, or `random.Random(seed).random` in tests.
RandomSource = Callable[[], float]


@attrs.frozen
class RetryPolicy:
    """The RETRY_* settings as one value."""

    max_retries: int
    initial_delay_ms: int
    max_delay_ms: int
    jitter_factor: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_retries=settings.retry_max_retries,
            initial_delay_ms=settings.retry_initial_delay_ms,
            max_delay_ms=settings.retry_max_delay_ms,
            jitter_factor=settings.retry_jitter_factor,
        )

    def base_delay_ms(self, retry: int) -> int:
        """The delay of retry `retry` before jitter: doubling from the initial delay, capped."""
        if retry < 0:
            raise ValueError(f"retry numbers start at 0, got {retry}")
        return min(self.initial_delay_ms << min(retry, _MAX_EXPONENT), self.max_delay_ms)

    def delay(self, retry: int, u: float) -> float:
        """Seconds retry `retry` waits, for a jitter draw `u` in [0, 1)."""
        if not 0.0 <= u < 1.0:
            raise ValueError(f"u must be in [0, 1), got {u}")
        return self.base_delay_ms(retry) * (1.0 + self.jitter_factor * u) / 1000.0

    def delays(self, random: RandomSource) -> Iterator[float]:
        """The waits before retry 0, 1, 2, ... without end (held commands retry until they expire)."""
        retry = 0
        while True:
            yield self.delay(retry, random())
            retry += 1
