"""Retry delays of docs/protocol.md#retries-and-backoff, exactly, for a seeded random source. Pure."""

from __future__ import annotations

import itertools
import random

import pytest

from edge.config import settings_for_tests
from edge.kafka.backoff import RetryPolicy


def test_exact_sequence_for_a_seeded_source():
    """Defaults (100 ms doubling, 1 s cap, 10 % jitter) with random.Random(7): each value by the formula."""
    policy = RetryPolicy.from_settings(settings_for_tests())
    draws = random.Random(7)
    got = list(itertools.islice(policy.delays(random.Random(7).random), 6))
    expected_base_ms = [100, 200, 400, 800, 1000, 1000]
    expected = [base * (1 + 0.1 * draws.random()) / 1000 for base in expected_base_ms]
    assert got == expected
    # The same numbers written out (u = 0.3238, 0.1508, 0.6509, 0.0724, 0.5359, 0.3657), so a change in
    # the formula cannot hide behind the expression above.
    assert [round(d, 6) for d in got] == [0.103238, 0.203017, 0.426037, 0.805795, 1.053588, 1.036569]


def test_base_delay_doubles_then_caps_and_never_overflows():
    policy = RetryPolicy(max_retries=3, initial_delay_ms=50, max_delay_ms=300, jitter_factor=0.5)
    assert [policy.base_delay_ms(n) for n in range(5)] == [50, 100, 200, 300, 300]
    assert policy.base_delay_ms(10_000) == 300
    assert policy.delay(0, 0.0) == 0.05 and policy.delay(1, 0.5) == 0.125


def test_zero_jitter_and_bad_draws():
    policy = RetryPolicy(max_retries=0, initial_delay_ms=0, max_delay_ms=0, jitter_factor=0.0)
    assert policy.delay(3, 0.99) == 0.0
    with pytest.raises(ValueError):
        policy.delay(0, 1.0)
    with pytest.raises(ValueError):
        policy.base_delay_ms(-1)
