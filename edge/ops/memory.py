"""Memory given back to the system after a flood: `serve_memory_trim`, one task of the root supervisor.

Thousands of connections allocate their TLS and HTTP/2 buffers with the C allocator. When they close,
glibc's malloc keeps the freed memory in its heap for reuse instead of returning it, so the edge's RSS
stays at its flood peak (measured: +130 MiB after 3,000 connections stuck in the TLS handshake, still
there after the attack ended). Every TRIM_INTERVAL seconds `malloc_trim(0)` hands whole free pages back.
It takes a few milliseconds on a heap of a few hundred MiB, once a minute; without glibc (musl, macOS)
the task only sleeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Final

import structlog
import trio

log = structlog.get_logger(__name__)

TRIM_INTERVAL: Final = 60.0


def malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)`, or None where there is no such function."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return lambda: int(function(0))


async def serve_memory_trim(
    interval: float = TRIM_INTERVAL, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Trim the C heap every `interval` seconds (Trio time) until cancelled."""
    trim = malloc_trim()
    log.debug("memory_trim", available=trim is not None, interval_sec=interval)
    task_status.started()
    while True:
        await trio.sleep(interval)
        if trim is not None:
            trim()
