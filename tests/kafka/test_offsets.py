"""The commit tracker: commit points, settled-range metadata, take-over. Pure; checked against a model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kafka.offsets import (
    METADATA_PREFIX,
    OffsetTracker,
    PartitionProgress,
    decode_settled,
    encode_settled,
)

P = ("edge-commands-e1", 0)


def test_commit_point_waits_for_the_first_unsettled_record():
    """Later records settling first do not move the commit point past an earlier unsettled one."""
    tracker = OffsetTracker()
    tracker.assign(P)
    tickets = [tracker.read(P, offset) for offset in (10, 11, 12, 15)]  # 13-14: no records (e.g. markers)
    # Offsets without records between unsettled ones count as settled: there is nothing to deliver.
    assert tracker.unsettled == 4 and tracker.due_commits() == {P: (10, METADATA_PREFIX + "2+2")}
    for ticket in tickets[1:]:
        tracker.settle(ticket)
    assert tracker.due_commits() == {P: (10, METADATA_PREFIX + "0+5")}  # 11..15 settled above 10
    tracker.settle(tickets[0])
    assert tracker.due_commits() == {P: (16, "")} and tracker.unsettled == 0
    tracker.committed({P: (16, "")})
    assert tracker.due_commits() == {}


def test_revoked_partition_ignores_late_settles_and_reports_its_last_commit():
    tracker = OffsetTracker()
    tracker.assign(P)
    first, second = tracker.read(P, 0), tracker.read(P, 1)
    tracker.settle(first)
    generation = tracker.generation
    assert tracker.revoke([P]) == {P: (1, "")}
    assert tracker.generation > generation and tracker.unsettled == 0
    tracker.settle(second)  # a delivery finishing after the revocation: not ours any more
    assert tracker.read(P, 2) is None and tracker.due_commits() == {}


def test_take_over_skips_what_the_previous_owner_settled():
    """A new owner reading from the commit point skips records the metadata says are settled."""
    old = PartitionProgress()
    for offset in range(100, 110):
        old.read(offset)
    for offset in (101, 102, 105, 106, 107, 109):
        old.settle(offset)
    head, metadata = old.commit_point()
    assert head == 100
    new = PartitionProgress(decode_settled(head, metadata))
    needs_work = [offset for offset in range(100, 115) if new.read(offset)]
    assert needs_work == [100, 103, 104, 108, 110, 111, 112, 113, 114]


def test_foreign_or_broken_metadata_skips_nothing():
    for text in (None, "", "hello", METADATA_PREFIX + "x+1", METADATA_PREFIX + "-1+2", METADATA_PREFIX + "1+0"):
        assert decode_settled(5, text) == []


def test_metadata_is_bounded():
    ranges = [(10 + 3 * i, 10 + 3 * i + 1) for i in range(1000)]
    text = encode_settled(9, ranges, max_chars=100)
    assert len(text) <= 100
    decoded = decode_settled(9, text)
    assert decoded == ranges[: len(decoded)] and len(decoded) > 5


@st.composite
def histories(draw):
    gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=60))
    offsets, offset = [], draw(st.integers(0, 1000))
    for gap in gaps:
        offsets.append(offset)
        offset += gap
    settled = draw(st.sets(st.sampled_from(offsets)))
    return offsets, settled


@settings(max_examples=300, deadline=None)
@given(histories())
def test_tracker_matches_the_model(history):
    """For any reads and settles: the commit point is the first unsettled record (or one past the
    last); after a take-over from that commit, exactly the unsettled records are processed again."""
    offsets, settled = history
    progress = PartitionProgress()
    for offset in offsets:
        assert progress.read(offset)
    for offset in settled:
        progress.settle(offset)
    unsettled = [o for o in offsets if o not in settled]
    head, metadata = progress.commit_point(max_chars=100_000)
    assert head == (unsettled[0] if unsettled else offsets[-1] + 1)
    again = PartitionProgress(decode_settled(head, metadata))
    reprocessed = [o for o in offsets if o >= head and again.read(o)]
    assert reprocessed == unsettled
    # Once the new owner settles them, its commit point is past everything.
    for offset in reprocessed:
        again.settle(offset)
    if any(o >= head for o in offsets):
        assert again.commit_point()[0] == offsets[-1] + 1


@settings(max_examples=200, deadline=None)
@given(histories(), st.integers(20, 200))
def test_truncated_metadata_never_skips_an_unsettled_record(history, max_chars):
    offsets, settled = history
    progress = PartitionProgress()
    for offset in offsets:
        progress.read(offset)
    for offset in settled:
        progress.settle(offset)
    head, metadata = progress.commit_point(max_chars=max_chars)
    assert len(metadata) <= max_chars
    again = PartitionProgress(decode_settled(head, metadata))
    reprocessed = {o for o in offsets if o >= head and again.read(o)}
    assert {o for o in offsets if o not in settled} <= reprocessed
