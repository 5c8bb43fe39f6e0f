"""Who is connected: peer id -> live session, for the command router and for takeovers.

One `PeerRegistry` per edge process, owned by `serve_peers`. A session becomes visible to the router
only after its `connected` event is in the event channel, and disappears before its `disconnected`
event is sent, so the router never hands a command to a session the backend has not heard of.

Takeover (a second stream registering a connected id) runs under a per-peer lock: the old session is
ended with reason `replaced` and awaited until its cleanup has queued its `disconnected` event; only then
is the new session inserted and its `connected` queued. Both go through the same FIFO event channel and
share a Kafka key, so the backend sees them in that order.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator

import attrs
import trio

from edge.peers.session import Session
from edge.records import DisconnectReason


class PeerLimitReached(Exception):
    """The edge already holds MAX_PEERS sessions."""


class TakeoverTimedOut(Exception):
    """The session being replaced did not finish its cleanup in time."""


@attrs.define
class PeerRegistry:
    max_peers: int
    takeover_timeout: float
    _sessions: dict[str, Session] = attrs.field(factory=dict, init=False)
    _claims: dict[str, trio.Lock] = attrs.field(factory=dict, init=False)
    _epochs: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    def next_epoch(self) -> int:
        """A session number that only grows within this process (shared by all peers, so it needs
        no per-peer memory and still only grows for each peer)."""
        return next(self._epochs)

    def lookup(self, peer_id: str) -> Session | None:
        session = self._sessions.get(peer_id)
        if session is None or not session.accepting:
            return None
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._sessions

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    async def register(self, session: Session, announce: Callable[[], Awaitable[None]]) -> None:
        """Make `session` the peer's live session, replacing any other, then `announce()` it.

        Raises PeerLimitReached (the new session was not registered) or TakeoverTimedOut.
        """
        peer_id = session.info.peer_id
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
                self._sessions[peer_id] = session
                await announce()
                session.announced = True
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._claims.pop(peer_id, None)

    def release(self, session: Session) -> None:
        """Forget `session` if it is still the peer's live one (a replaced session is already gone)."""
        if self._sessions.get(session.info.peer_id) is session:
            del self._sessions[session.info.peer_id]

    def end_all(self, reason: DisconnectReason) -> int:
        """Ask every live session to end (graceful drain). Returns how many were asked."""
        sessions = list(self._sessions.values())
        for session in sessions:
            session.end(reason)
        return len(sessions)
