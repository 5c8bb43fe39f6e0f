"""A peer driven by the real grpcio client, for tests that claim gRPC behaviour.

grpcio's blocking API runs in worker threads (`trio.to_thread`), so the test's Trio loop is never
blocked; every receive waits under a Trio deadline. Sends only queue the message: grpcio's own thread
writes it, in order.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import trio

from edge.proto import CONNECT_PATH, pb

_END = object()
_HEARTBEAT = pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1))


#: One TCP connection per channel (grpcio otherwise may share one between identical channels).
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


class GrpcioPeer:
    """One `Connect` stream from a grpcio channel of its own (or of `channel=`, shared; not closed here).

    `client_certificate=(private_key_pem, certificate_chain_pem)` presents a TLS client certificate;
    `own_connection=True` keeps this channel off grpcio's shared subchannel pool. Every message
    received is kept in `received`.
    """

    def __init__(
        self,
        port: int,
        *,
        root_certificates: bytes | None,
        metadata=(),
        compression=None,
        client_certificate: tuple[bytes, bytes] | None = None,
        own_connection: bool = False,
        channel=None,
    ) -> None:
        target = f"localhost:{port}"
        self._owns_channel = channel is None
        options = [OWN_CONNECTION] if own_connection else []
        if channel is not None:
            self.channel = channel
        elif root_certificates is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            key, chain = client_certificate if client_certificate is not None else (None, None)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=key, certificate_chain=chain
            )
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self._requests: queue.Queue = queue.Queue()
        connect = self.channel.stream_stream(
            CONNECT_PATH,
            request_serializer=_serialize,
            response_deserializer=pb.EdgeMessage.FromString,
        )
        self.received: list[pb.EdgeMessage] = []
        self.call = connect(self._request_iterator(), metadata=metadata, compression=compression)
        self._responses = iter(self.call)

    def _request_iterator(self) -> Iterator[pb.PeerMessage]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def send(self, message: pb.PeerMessage | bytes) -> None:
        """Queue a message; bytes go on the wire as they are (a test can send anything)."""
        self._requests.put(message)

    def register(self, peer_id: str, catalog=(), request_id: str = "reg-1") -> None:
        self.send(
            pb.PeerMessage(
                request_id=request_id,
                registration_request=pb.PeerRegistrationRequest(peer_name=peer_id, catalog_uuids=list(catalog)),
            )
        )

    async def heartbeat_until(self, stop: trio.Event, interval: float) -> None:
        """Send a heartbeat every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            self.send(_HEARTBEAT)
            with trio.move_on_after(interval):
                await stop.wait()

    def half_close(self) -> None:
        self._requests.put(_END)

    def cancel(self) -> None:
        self.call.cancel()

    def close(self) -> None:
        self._requests.put(_END)
        self.call.cancel()
        if self._owns_channel:
            self.channel.close()

    async def receive(self, timeout: float = 10.0) -> pb.EdgeMessage | None:
        """The next EdgeMessage, or None once the server ended the stream."""
        with trio.fail_after(timeout):
            message = await trio.to_thread.run_sync(self._next, abandon_on_cancel=True)
        if message is not None:
            self.received.append(message)
        return message

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


def _serialize(message: pb.PeerMessage | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()
