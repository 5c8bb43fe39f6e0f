"""`RefusalTally`: connections refused or closed by a limit, counted by cause, and logged as one summary
line per interval, never one line each.

Under a flood the edge refuses thousands of connections a second; a log line each would be a second
flood. A refusal is one `count(cause)` (a dict increment, no I/O). `serve_refusal_summaries` logs
`refusals_summary` with the counts per cause once per interval in which there were any, and once more
for the last part-interval when it is cancelled. The totals are the counter family
`giggityflix_edge_connections_refused_total{cause}`, read at scrape time (edge.ops.metrics).

Task tree: `serve_refusal_summaries` is one task, started by whoever owns the tally (the edge's root
supervisor, edge.nursery); cancelling it logs what is left, synchronously.
"""

from __future__ import annotations

import collections
from typing import Final

import attrs
import structlog
import trio

from edge.grpc.connection_limits import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS

log = structlog.get_logger(__name__)

#: Cause: accept() failed for lack of file descriptors or kernel memory (EMFILE, ENFILE, ENOMEM, ENOBUFS).
ACCEPT_FAILED: Final = "accept_failed"
#: Cause: a peer-port connection had no open stream for GRPC_IDLE_TIMEOUT_SEC (GOAWAY and closed).
IDLE_TIMEOUT: Final = "idle_timeout"
#: Causes on the ops HTTP port (edge.ops.http_limits).
HTTP_EVICTED: Final = "http_evicted"
HTTP_HEAD_TIMEOUT: Final = "http_head_timeout"
#: Causes of the HTTP/2 frame budgets (edge.grpc.frame_guard, edge.grpc.outbound): GOAWAY, then closed.
FRAME_CAUSES: Final = (
    "frame_too_large",
    "ping_flood",
    "settings_flood",
    "reset_flood",
    "window_update_flood",
    "empty_frames_flood",
    "empty_header_name",
    "not_reading",
)
#: Every cause, pre-created in the metric so a dashboard reads 0 rather than nothing.
CAUSES: Final = (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    ACCEPT_FAILED,
    IDLE_TIMEOUT,
    HTTP_EVICTED,
    HTTP_HEAD_TIMEOUT,
    *FRAME_CAUSES,
)

#: Seconds between two `refusals_summary` lines (at most one line per interval, none when quiet).
SUMMARY_INTERVAL: Final = 10.0


@attrs.define(eq=False)
class RefusalTally:
    """Refusals by cause: `totals` since start, and the counts not yet summarized. One Trio thread only."""

    totals: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _unreported: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    def count(self, cause: str, times: int = 1) -> None:
        self.totals[cause] += times
        self._unreported[cause] += times

    def take_unreported(self) -> dict[str, int]:
        """The counts since the last call (empty when there were none), and start counting afresh."""
        taken = dict(sorted(self._unreported.items()))
        self._unreported.clear()
        return taken


def log_summary(tally: RefusalTally, interval: float) -> None:
    """One `refusals_summary` line with what `tally` counted since the last one, if anything."""
    counts = tally.take_unreported()
    if counts:
        log.warning("refusals_summary", interval_sec=interval, refused=sum(counts.values()), by_cause=counts)


async def serve_refusal_summaries(
    tally: RefusalTally,
    interval: float = SUMMARY_INTERVAL,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Log `tally`'s summary every `interval` seconds (Trio time) until cancelled, then the rest."""
    task_status.started()
    try:
        while True:
            await trio.sleep(interval)
            log_summary(tally, interval)
    finally:
        log_summary(tally, interval)
