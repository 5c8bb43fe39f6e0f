"""`serve_peers`: the gRPC server and every peer session under it.

Task tree (each line owns the ones below it; cancelling one ends those below first):

    serve_peers                owns the event channel's send end and the peer registry
      serve_grpc               accept loop, one task per connection, one per stream
        PeerStreamHandler      one per Connect stream: handshake -> Session.serve -> cleanup
          Session tasks        reader, writer, heartbeat, in the session's own cancel scope

When `serve_peers` is cancelled, every session ends with reason `shutdown` and queues its
`disconnected` event before the send end of the event channel is closed, so the Kafka bridge, which
drains the channel until it is closed, publishes them all.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable

import structlog
import trio

from edge.config import ConfigError, Settings
from edge.grpc import GrpcServerConfig, serve_grpc
from edge.grpc.tls import server_ssl_context
from edge.peers.admission import Admission, apply_peer_tls, load_admission
from edge.peers.handler import PeerStreamHandler
from edge.peers.limits import message_meter_factory
from edge.peers.registry import PeerRegistry
from edge.proto import CONNECT_PATH
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)


def grpc_config(settings: Settings) -> GrpcServerConfig:
    """The transport settings for the peer port. Certificates are read here, once, at start-up."""
    ssl_context = None
    if settings.grpc_use_tls:
        for variable, path in (("GRPC_CERT_PATH", settings.grpc_cert_path), ("GRPC_KEY_PATH", settings.grpc_key_path)):
            if not path.is_file():
                raise ConfigError(
                    variable,
                    "a readable PEM file while GRPC_USE_TLS is true (python -m edge certs writes development ones)",
                    str(path),
                )
        try:
            ssl_context = server_ssl_context(settings.grpc_cert_path, settings.grpc_key_path)
        except (OSError, ssl.SSLError):
            raise ConfigError(
                "GRPC_CERT_PATH", "a PEM certificate matching the PEM key at GRPC_KEY_PATH", str(settings.grpc_cert_path)
            ) from None
        apply_peer_tls(ssl_context, settings)  # client certificates (PEER_AUTH_MODE)
    return GrpcServerConfig(
        host=settings.grpc_server_address.host,
        port=settings.grpc_server_address.port,
        ssl_context=ssl_context,
        max_message_bytes=settings.grpc_max_message_bytes,
        max_concurrent_streams=settings.grpc_max_concurrent_streams,
        shutdown_grace=settings.shutdown_timeout_sec,
        message_meter=message_meter_factory(settings.peer_message_rate, settings.peer_message_burst),
    )


async def serve_peers(
    settings: Settings,
    events: trio.MemorySendChannel[OutboundRecord],
    registry: PeerRegistry,
    now: Callable[[], datetime.datetime],
    *,
    config: GrpcServerConfig | None = None,
    admission: Admission | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve peers until cancelled. Reports the bound gRPC port through `task_status`.

    `config` and `admission` are built from `settings` (reading certificates and keys) unless given.
    """
    config = config if config is not None else grpc_config(settings)
    admission = admission if admission is not None else load_admission(settings, now)
    handler = PeerStreamHandler(settings=settings, registry=registry, events=events, now=now, admission=admission)
    async with events:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_grpc, config, {CONNECT_PATH: admission.guard(handler)})
            log.info("peers_listening", host=config.host, port=port, tls=config.ssl_context is not None)
            task_status.started(port)
