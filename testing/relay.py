"""A TCP relay between a test's client and a server, for what loopback alone cannot show: a server
that looks down (the relay drops every connection while closed), or a client from another address.

Bytes pass through untouched (TLS included). Only the relayed connection goes through it: Kafka's
metadata, for one, then points clients at the broker's own address.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import attrs
import trio


@attrs.define(eq=False)
class Relay:
    """Listens on 127.0.0.1:`port` and relays each connection to `target_host`:`target_port`.

    While `is_open` is False every connection is accepted and dropped at once. With `source_host`
    (e.g. 127.0.0.2) it connects to the target *from* that address: every loopback client shares
    127.0.0.1, so this is how a real grpcio client shows up at the edge from another source address.
    """

    target_host: str
    target_port: int
    source_host: str | None = None
    is_open: bool = True
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until cancelled; reports the port it listens on."""
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, [listener])
            task_status.started(self.port)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.is_open:
                return
            try:
                upstream = await trio.open_tcp_stream(self.target_host, self.target_port, local_address=self.source_host)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)


@contextlib.asynccontextmanager
async def running_relay(target: str, *, is_open: bool = True, source_host: str | None = None) -> AsyncIterator[Relay]:
    """A Relay to `target` ("host:port"), serving until the block ends."""
    host, port = target.rsplit(":", 1)
    relay = Relay(host, int(port), source_host=source_host, is_open=is_open)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        yield relay
        nursery.cancel_scope.cancel()


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()
