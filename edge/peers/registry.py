"""Who is connected: peer id -> live session, for the command router and for takeovers.

One `PeerRegistry` per edge process, owned by `serve_peers`. A session becomes visible to the router
(`lookup`) only after its `connected` event is in the event channel, and stops being visible the moment
it ends, before its `disconnected` event is queued, so the router never hands a command to a session
the backend has not heard of or one that is going away.

A session stays registered until its last records and `disconnected` are queued (`finish`, called by
`serve_endings`), which may take a while when Kafka is slow. A registration of the same peer id (a
takeover of a live session, or a reconnect after an ending) runs under a per-peer lock: the registered
session is ended with reason `replaced` (unless it already ended) and awaited until it is finished;
only then is the new session inserted and its `connected` queued. Both go through the same FIFO event
channel and share a Kafka key, so the backend sees a peer's `disconnected` before its next
`connected`. Sessions that are ending count toward `max_peers` until they are finished.

Epochs are fleet-wide (docs/scaling.md#epochs): `next_epoch(wall-clock ms, highest epoch presence has
seen for the peer)`, so a peer's new session is numbered above every session of it this edge has seen
on any edge, and above its sessions before a restart. The registry writes each session into the
presence view as it is numbered and as it finishes, so the view is never behind this edge's own
sessions. `displace` is the cross-edge takeover: presence saw a newer session of a peer on another
edge, and the one here ends with reason `replaced`.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable

import attrs
import trio

from edge.peers.session import Session
from edge.presence import Holder, PresenceView, epoch_ms, next_epoch
from edge.records import DisconnectReason

#: Peers the view of a registry built without one (tests) remembers.
DEFAULT_PRESENCE_ENTRIES = 100_000


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class PeerLimitReached(Exception):
    """The edge already holds MAX_PEERS sessions."""


class TakeoverTimedOut(Exception):
    """The session being replaced did not finish its cleanup in time."""


@attrs.define
class PeerRegistry:
    """Peer id -> live session. Safe to use from any task of the edge's Trio run.

    `max_peers` caps live sessions (MAX_PEERS); `takeover_timeout` bounds how long a registration waits
    for the session it replaces to finish its cleanup (SHUTDOWN_TIMEOUT_SEC). `edge_id` names this
    edge in `presence`, the shared view the Kafka side fills; `now` is the edge's one wall clock.
    """

    max_peers: int
    takeover_timeout: float
    edge_id: str = "edge-1"
    presence: PresenceView = attrs.field(factory=lambda: PresenceView(DEFAULT_PRESENCE_ENTRIES))
    now: Callable[[], datetime.datetime] = _utc_now
    _sessions: dict[str, Session] = attrs.field(factory=dict, init=False)
    _claims: dict[str, trio.Lock] = attrs.field(factory=dict, init=False)

    def lookup(self, peer_id: str) -> Session | None:
        """The peer's live session if it can take deliveries (announced and not ending), else None."""
        session = self._sessions.get(peer_id)
        if session is None or not session.accepting:
            return None
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    async def register(
        self,
        peer_id: str,
        create: Callable[[int], Session],
        announce: Callable[[Session], Awaitable[None]],
    ) -> Session:
        """Make a new session the peer's live one, replacing any other, and announce it.

        Under the peer's takeover lock: end the live session (reason `replaced`) and wait up to
        `takeover_timeout` until its cleanup has queued its `disconnected`; check `max_peers`; then
        `create(epoch)` the session, insert it and `await announce(session)` (which queues
        `connected`). Returns the announced session.

        Raises PeerLimitReached or TakeoverTimedOut (nothing was created), or whatever `announce`
        raises (Cancelled at shutdown): the session is then removed again, never announced, and its
        `ended` is set.
        """
        lock = self._claims.setdefault(peer_id, trio.Lock())
        try:
            async with lock:
                while (old := self._sessions.get(peer_id)) is not None:
                    old.end(DisconnectReason.REPLACED)
                    with trio.move_on_after(self.takeover_timeout):
                        await old.ended.wait()
                    if not old.ended.is_set():
                        raise TakeoverTimedOut(peer_id)
                if len(self._sessions) >= self.max_peers:
                    raise PeerLimitReached(peer_id)
                # Numbered under the lock, and written into the view at once, so a later session of a
                # peer always has a higher epoch.
                now_ms = epoch_ms(self.now())
                session = create(next_epoch(now_ms, self.presence.highest_epoch(peer_id)))
                info = session.info
                self.presence.apply(peer_id, Holder(self.edge_id, info.epoch, info.session_id, True, now_ms))
                self._sessions[peer_id] = session
                try:
                    await announce(session)
                    session.announced = True
                finally:
                    if not session.announced:
                        self.finish(session)
                return session
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._claims.pop(peer_id, None)

    def finish(self, session: Session) -> None:
        """`session`'s last records are queued (or given up): forget it and wake whoever waits for it."""
        info = session.info
        if self._sessions.get(info.peer_id) is session:
            del self._sessions[info.peer_id]
        gone = Holder(self.edge_id, info.epoch, info.session_id, False, epoch_ms(self.now()))
        self.presence.apply(info.peer_id, gone)
        session.ended.set()

    def displace(self, peer_id: str, newer: Holder) -> bool:
        """Presence saw `newer`, a session of `peer_id` on another edge: end the session here with
        reason `replaced` if it is older (ABORTED to its stream). Returns whether one was ended."""
        session = self._sessions.get(peer_id)
        if session is None or session.end_reason is not None or newer.edge_id == self.edge_id:
            return False
        if (session.info.epoch, self.edge_id) >= (newer.epoch, newer.edge_id):
            return False  # the session here is the newer one: the other edge gives way
        session.end(DisconnectReason.REPLACED)
        return True
