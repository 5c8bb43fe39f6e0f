"""Helpers for the Kafka bridge tests against a real broker and real grpcio peers over TLS: a command's
JSON, and a registered peer that keeps what it receives."""

from __future__ import annotations

import json
from typing import Any

import trio

from edge.proto import pb
from testing.grpcio_peer import GrpcioPeer


def command(peer_id: str, request_id: str, command_type: str = "file_delete", data: Any = None, **extra: Any) -> bytes:
    document = {
        "peer_id": peer_id,
        "command_type": command_type,
        "command_data": data if data is not None else {"catalog_uuids": [request_id]},
        "request_id": request_id,
        **extra,
    }
    return json.dumps(document).encode()


class Collector:
    """A registered grpcio peer and a task that keeps every non-heartbeat EdgeMessage it receives."""

    def __init__(self, peer_id: str, port: int, ca_pem: bytes) -> None:
        self.peer_id = peer_id
        self.peer = GrpcioPeer(port, root_certificates=ca_pem)
        self.messages: list[pb.EdgeMessage] = []
        #: trio.current_time() at which each of `messages` arrived.
        self.arrived_at: list[float] = []
        self.ended = trio.Event()
        self._arrived = trio.Event()

    @classmethod
    async def connect(cls, nursery: trio.Nursery, peer_id: str, port: int, ca_pem: bytes) -> Collector:
        collector = cls(peer_id, port, ca_pem)
        collector.peer.register(peer_id, request_id=f"reg-{peer_id}")
        reply = await collector.peer.receive_kind("registration_response", timeout=30)
        assert reply.registration_response.success
        nursery.start_soon(collector._collect)
        return collector

    async def _collect(self) -> None:
        try:
            while True:
                message = await self.peer.receive(timeout=3600)
                if message is None:
                    return
                if message.WhichOneof("payload") != "heartbeat":
                    self.messages.append(message)
                    self.arrived_at.append(trio.current_time())
                    self._arrived.set()
                    self._arrived = trio.Event()
        finally:
            self.ended.set()

    @property
    def request_ids(self) -> list[str]:
        return [m.request_id for m in self.messages]

    async def wait_for(self, count: int, timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while len(self.messages) < count:
                await self._arrived.wait()

    def close(self) -> None:
        self.peer.close()
