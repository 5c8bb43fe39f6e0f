"""Which offsets may be committed: a per-partition tracker of settled records. Pure, no I/O, no loop.

A command record is *settled* once it was written to its peer's stream, or its dead letter was
acknowledged by the broker. A partition's commit point is the offset of its first unsettled record
(or one past the last record read, when all are settled): everything before it is settled, in order,
however out of order the settling happened. Kafka offsets are not contiguous (transaction markers,
compaction), so the tracker reasons about the records it was given, never about offset arithmetic.

The commit point alone makes a restart redeliver every record after the first unsettled one, and a
command held for an offline peer can stay unsettled for its whole lifetime. So each commit also
carries, in the commit's metadata string, the ranges of offsets above the commit point that are
already settled (`encode_settled`). A consumer that takes the partition over (after a restart or a
rebalance) reads them back and skips those records instead of delivering them twice. The text is
bounded (METADATA_MAX_CHARS, under the broker's default `offset.metadata.max.bytes` of 4096); ranges
that do not fit are left out, which only means those records may be redelivered.

Memory is proportional to the unsettled records, not to the records read: settled ones are forgotten
at once (the ranges above are recomputed from the gaps between unsettled offsets).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

#: (topic, partition); aiokafka's TopicPartition is a NamedTuple and compares equal to it.
Partition = tuple[str, int]
#: An inclusive range of offsets.
Range = tuple[int, int]
#: A commit: (offset of the next record to read, metadata naming settled ranges above it).
CommitPoint = tuple[int, str]

METADATA_PREFIX: Final = "edge-settled:1:"
METADATA_MAX_CHARS: Final = 1000


def encode_settled(head: int, ranges: Sequence[Range], max_chars: int = METADATA_MAX_CHARS) -> str:
    """Commit metadata for settled `ranges` above the commit point `head`.

    Each range is written as `gap+length` relative to the end of the one before (the first relative to
    head + 1), so typical offsets cost a few characters. Ranges that would push the text past
    `max_chars` are dropped from the end. Empty ranges give an empty string.
    """
    if not ranges:
        return ""
    parts: list[str] = []
    used = len(METADATA_PREFIX)
    expected = head + 1
    for first, last in ranges:
        if first < expected or last < first:
            raise ValueError(f"ranges must be sorted, disjoint and above {head}: {ranges!r}")
        part = f"{first - expected}+{last - first + 1}"
        cost = len(part) + (1 if parts else 0)
        if used + cost > max_chars:
            break
        parts.append(part)
        used += cost
        expected = last + 1
    return METADATA_PREFIX + ",".join(parts) if parts else ""


def decode_settled(head: int, text: str | None) -> list[Range]:
    """The settled ranges in commit metadata written by `encode_settled`; [] for anything else."""
    if not text or not text.startswith(METADATA_PREFIX):
        return []
    ranges: list[Range] = []
    expected = head + 1
    try:
        for part in text[len(METADATA_PREFIX) :].split(","):
            gap_text, length_text = part.split("+")
            gap, length = int(gap_text), int(length_text)
            if gap < 0 or length < 1:
                return []
            first = expected + gap
            last = first + length - 1
            ranges.append((first, last))
            expected = last + 1
    except ValueError:
        return []  # not ours after all: skipping nothing is always safe
    return ranges


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted ranges with touching and overlapping ones joined."""
    merged: list[Range] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


class PartitionProgress:
    """The records of one partition read during one assignment, and which are settled."""

    def __init__(self, skip: Sequence[Range] = ()) -> None:
        self._pending: set[int] = set()
        self._heap: list[int] = []
        self._last: int | None = None
        #: Ranges a previous owner settled, not yet passed by what we read.
        self._skip: list[Range] = merge(skip)

    @property
    def unsettled(self) -> int:
        return len(self._pending)

    @property
    def last_read(self) -> int | None:
        return self._last

    def read(self, offset: int) -> bool:
        """Record that `offset` was read. True if it needs processing; False if it is already settled
        (a previous owner settled it) or was read before (the fetch position moved back)."""
        if self._last is not None and offset <= self._last:
            return False
        self._last = offset
        while self._skip and self._skip[0][1] < offset:
            self._skip.pop(0)
        if self._skip and self._skip[0][0] <= offset:
            return False
        self._pending.add(offset)
        heapq.heappush(self._heap, offset)
        return True

    def settle(self, offset: int) -> bool:
        """Mark a record settled. False if it was not pending (settled twice: ignored)."""
        if offset not in self._pending:
            return False
        self._pending.discard(offset)
        while self._heap and self._heap[0] not in self._pending:
            heapq.heappop(self._heap)
        return True

    def head(self) -> int | None:
        """The offset to commit: the first unsettled record, else one past the last read (and past
        any settled ranges right after it). None before anything was read."""
        if self._heap:
            return self._heap[0]
        if self._last is None:
            return None
        head = self._last + 1
        for first, last in self._skip:
            if first <= head <= last:
                head = last + 1
        return head

    def settled_above(self, head: int) -> list[Range]:
        """Settled ranges above `head`: the gaps between unsettled records, the tail after the last
        unsettled one, and the previous owner's ranges beyond what was read."""
        ranges: list[Range] = []
        if self._pending and self._last is not None:
            pending = sorted(self._pending)
            for below, above in zip(pending, pending[1:], strict=False):
                if above - below > 1:
                    ranges.append((below + 1, above - 1))
            if self._last > pending[-1]:
                ranges.append((pending[-1] + 1, self._last))
        floor = max(head, self._last if self._last is not None else head)
        for first, last in self._skip:
            if last > floor:
                ranges.append((max(first, floor + 1), last))
        return [r for r in merge(ranges) if r[0] > head]

    def commit_point(self, max_chars: int = METADATA_MAX_CHARS) -> CommitPoint | None:
        head = self.head()
        if head is None:
            return None
        return head, encode_settled(head, self.settled_above(head), max_chars)


@attrs.frozen
class Ticket:
    """Hands the settling of one record to whoever processes it. Settling a ticket of a partition
    that was revoked since is a no-op: its new owner decides about that record."""

    partition: Partition
    offset: int
    progress: PartitionProgress = attrs.field(eq=False, repr=False)


class OffsetTracker:
    """Every assigned partition's progress, and what was last committed for each."""

    def __init__(self, max_metadata_chars: int = METADATA_MAX_CHARS) -> None:
        self._max_chars = max_metadata_chars
        self._progress: dict[Partition, PartitionProgress] = {}
        self._committed: dict[Partition, CommitPoint] = {}
        self._unsettled = 0
        #: Grows on every assignment change: a batch read under an older generation is stale.
        self.generation = 0

    @property
    def unsettled(self) -> int:
        """Records read and not settled, over all partitions."""
        return self._unsettled

    def assigned(self) -> frozenset[Partition]:
        return frozenset(self._progress)

    def owns(self, partition: Partition) -> bool:
        return (partition[0], partition[1]) in self._progress

    def assign(self, partition: Partition, committed: CommitPoint | None = None) -> None:
        """Start tracking `partition`, skipping what its last commit's metadata says is settled.
        A partition already tracked keeps its progress."""
        partition = (partition[0], partition[1])
        if partition in self._progress:
            return
        skip = decode_settled(committed[0], committed[1]) if committed is not None else []
        self._progress[partition] = PartitionProgress(skip)
        if committed is not None:
            self._committed[partition] = committed
        self.generation += 1

    def revoke(self, partitions: Iterable[Partition]) -> dict[Partition, CommitPoint]:
        """Stop tracking `partitions`; return the commits still to make for them."""
        due: dict[Partition, CommitPoint] = {}
        for partition in partitions:
            partition = (partition[0], partition[1])
            progress = self._progress.pop(partition, None)
            if progress is None:
                continue
            self._unsettled -= progress.unsettled
            point = progress.commit_point(self._max_chars)
            if point is not None and point != self._committed.get(partition):
                due[partition] = point
            self._committed.pop(partition, None)
        self.generation += 1
        return due

    def read(self, partition: Partition, offset: int) -> Ticket | None:
        """A ticket for a record just read, or None if it needs no processing (already settled, or
        its partition is no longer ours)."""
        progress = self._progress.get((partition[0], partition[1]))
        if progress is None or not progress.read(offset):
            return None
        self._unsettled += 1
        return Ticket((partition[0], partition[1]), offset, progress)

    def settle(self, ticket: Ticket) -> None:
        if self._progress.get(ticket.partition) is not ticket.progress:
            return  # revoked since: not ours to settle
        if ticket.progress.settle(ticket.offset):
            self._unsettled -= 1

    def due_commits(self) -> dict[Partition, CommitPoint]:
        """Commit points that differ from what was last committed."""
        due: dict[Partition, CommitPoint] = {}
        for partition, progress in self._progress.items():
            point = progress.commit_point(self._max_chars)
            if point is not None and point != self._committed.get(partition):
                due[partition] = point
        return due

    def committed(self, points: Mapping[Partition, CommitPoint]) -> None:
        """Record that `points` were committed (only for partitions still tracked)."""
        for partition, point in points.items():
            if partition in self._progress:
                self._committed[partition] = point

    def positions(self) -> dict[Partition, int | None]:
        """The last offset read in each partition (None: nothing read yet)."""
        return {partition: progress.last_read for partition, progress in self._progress.items()}
