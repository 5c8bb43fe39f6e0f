"""`serve_kafka_bridge`: the only place the edge talks to Kafka.

    serve_kafka_bridge
      serve_event_producer     event channel -> Kafka (lifecycle, catalog, responses, dead letters)

The bridge is started before the peer server and outlives it: the root supervisor nests the peer
server inside, so on shutdown every session has queued its `disconnected` event, and the producer has
drained the channel, before Kafka clients are closed.
"""

from __future__ import annotations

from functools import partial

import structlog
import trio

from edge.config import Settings
from edge.kafka.producer import serve_event_producer
from edge.kafka.state import KafkaState
from edge.ops.metrics import EdgeMetrics
from edge.peers.registry import PeerRegistry
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)


async def serve_kafka_bridge(
    settings: Settings,
    events: trio.MemoryReceiveChannel[OutboundRecord],
    registry: PeerRegistry,
    state: KafkaState,
    *,
    metrics: EdgeMetrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    state.consumer_enabled = False
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_event_producer, metrics=metrics), settings, events, state)
        task_status.started()
