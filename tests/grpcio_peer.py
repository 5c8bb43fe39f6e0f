"""A peer driven by the real grpcio client, for tests that claim gRPC behaviour.

grpcio's blocking API runs in worker threads (`trio.to_thread`), so the test's Trio loop is never
blocked; every receive waits under a Trio deadline.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import trio

from edge.proto import CONNECT_PATH, pb

_END = object()


class GrpcioPeer:
    """One `Connect` stream from a grpcio channel of its own."""

    def __init__(self, port: int, *, root_certificates: bytes | None, metadata=(), compression=None) -> None:
        target = f"localhost:{port}"
        if root_certificates is None:
            self.channel = grpc.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials)
        self._requests: queue.Queue = queue.Queue()
        connect = self.channel.stream_stream(
            CONNECT_PATH,
            request_serializer=pb.PeerMessage.SerializeToString,
            response_deserializer=pb.EdgeMessage.FromString,
        )
        self.call = connect(self._request_iterator(), metadata=metadata, compression=compression)
        self._responses = iter(self.call)

    def _request_iterator(self) -> Iterator[pb.PeerMessage]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def send(self, message: pb.PeerMessage) -> None:
        self._requests.put(message)

    def register(self, peer_id: str, catalog=(), request_id: str = "reg-1") -> None:
        self.send(
            pb.PeerMessage(
                request_id=request_id,
                registration_request=pb.PeerRegistrationRequest(peer_name=peer_id, catalog_uuids=list(catalog)),
            )
        )

    def half_close(self) -> None:
        self._requests.put(_END)

    def cancel(self) -> None:
        self.call.cancel()

    def close(self) -> None:
        self._requests.put(_END)
        self.call.cancel()
        self.channel.close()

    async def receive(self, timeout: float = 10.0) -> pb.EdgeMessage | None:
        """The next EdgeMessage, or None once the server ended the stream."""
        with trio.fail_after(timeout):
            return await trio.to_thread.run_sync(self._next, abandon_on_cancel=True)

    async def receive_kind(self, kind: str, timeout: float = 10.0) -> pb.EdgeMessage:
        """Skip heartbeats until a message of `kind` arrives."""
        with trio.fail_after(timeout):
            while True:
                message = await self.receive(timeout)
                if message is None:
                    raise AssertionError(f"stream ended ({self.code()}) while waiting for {kind}")
                if message.WhichOneof("payload") == kind:
                    return message

    def _next(self) -> pb.EdgeMessage | None:
        try:
            return next(self._responses)
        except StopIteration:
            return None
        except grpc.RpcError:
            return None

    async def wait_status(self, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        """Drain the stream until it ends; return its status code and details."""
        with trio.fail_after(timeout):
            while await self.receive(timeout) is not None:
                pass
        return self.call.code(), self.call.details()

    def code(self):
        return self.call.code() if self.call.done() else None
