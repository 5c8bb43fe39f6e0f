"""Peers that come back on another edge, and what the fleet's presence topic says, for the edge-kill
test of tests/kafka/test_cluster.py.

A `RoamingPeer` is a grpcio peer that registers on one edge, publishes an event now and then, counts
every command (file_delete request) it is handed by request id, and, when its stream ends (the edge
died or ended the session), registers again on the next edge of the fleet's current addresses."""

from __future__ import annotations

import collections
import itertools
from typing import Any

import attrs
import trio

from edge.proto import pb
from testing.grpcio_peer import GrpcioPeer
from testing.kafka.client import NotEnoughRecords, consume_records

#: Between two attempts on the next edge (the test's own pacing; peer-sim does the real backoff).
RETRY_SEC = 0.2
#: One event (a file hash response) per this many seconds while registered.
PUBLISH_SEC = 0.25


@attrs.define(eq=False)
class RoamingPeer:
    peer_id: str
    #: The fleet's addresses by edge name; the test updates them (an edge restarted on a new port).
    ports: dict[str, int]
    #: The edge it registers on first; afterwards the other ones, in turn.
    edge: str
    commands: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Edge names of its registered sessions, in order.
    sessions: list[str] = attrs.field(factory=list)
    events_sent: int = 0
    changed: trio.Event = attrs.field(factory=trio.Event)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def run(self) -> None:
        for attempt in itertools.count():
            if self.edge not in self.ports:  # that edge is gone: the first one still there
                self.edge = sorted(self.ports)[0]
            port = self.ports[self.edge]
            peer = GrpcioPeer(port, root_certificates=None, own_connection=True)
            peer.register(self.peer_id, request_id=f"reg-{self.peer_id}-{attempt}")
            try:
                async with trio.open_nursery() as nursery:
                    while (message := await peer.receive(timeout=600)) is not None:
                        kind = message.WhichOneof("payload")
                        if kind == "registration_response" and message.registration_response.success:
                            self.sessions.append(self.edge)
                            nursery.start_soon(self._publish, peer)
                        elif kind == "file_delete_request":
                            self.commands[message.request_id] += 1
                        self._notify()
                    nursery.cancel_scope.cancel()
            finally:
                peer.close()
            names = sorted({*self.ports, self.edge})
            self.edge = names[(names.index(self.edge) + 1) % len(names)]
            await trio.sleep(RETRY_SEC)

    async def _publish(self, peer: GrpcioPeer) -> None:
        for n in itertools.count():
            peer.send(
                pb.PeerMessage(
                    request_id=f"{self.peer_id}/{len(self.sessions)}/{n}",
                    file_hash_response=pb.FileHashResponse(catalog_uuid=f"c{n}", hashes={"sha256": "ab"}),
                )
            )
            self.events_sent += 1
            await trio.sleep(PUBLISH_SEC)


async def presence_view(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """What an edge's presence view holds once it has read `topic`: each peer's newest record by
    (epoch, edge_id), as edge/presence.py keeps it."""
    try:
        records = await consume_records(bootstrap, topic, count=1_000_000, timeout=3)
    except NotEnoughRecords as short:
        records = short.records
    view: dict[str, dict[str, Any]] = {}
    for record in records:
        value = record.value
        if not isinstance(value, dict) or "epoch" not in value:
            continue
        old = view.get(value["peer_id"])
        if old is None or (value["epoch"], value["edge_id"]) >= (old["epoch"], old["edge_id"]):
            view[value["peer_id"]] = value
    return view


async def dead_letters(bootstrap: str, topic: str) -> int:
    try:
        return len(await consume_records(bootstrap, topic, count=1, timeout=3))
    except NotEnoughRecords as short:
        return len(short.records)
