"""`serve_kafka_bridge`: the only place the edge talks to Kafka.

    serve_kafka_bridge
      (start-up)               topic check: exist, or created (KAFKA_CREATE_TOPICS), or refuse to run
      serve_event_producer     event channel -> Kafka (lifecycle, catalog, responses, dead letters)
      CommandRouter.serve      one line per peer with commands waiting -> the peer's outbound channel
      serve_command_consumer   command topic -> parse -> router, or -> dead letters; manual commits
      serve_presence           presence topic -> the presence view (no group); cross-edge takeovers
      topic check, again       only if Kafka was unreachable at start-up, until it answers
      readiness reporter       logs `kafka_ready` / `kafka_not_ready` on every change

Data flows one way: consumer -> router -> peer channel -> peer stream; dead letters go through the same
event channel as every other record, with an `on_ack` that settles their command's offset. The pieces
are wired once: the intake (offsets and the window) first, then the router, which settles into it
(`intake.settle`), then the consumer, which is given both.

Kafka down at start: the topic check is given a short deadline; if the broker does not answer, the
bridge reports started anyway (the edge serves peers, buffers events, and is not ready), and the check,
the producer and the consumer wait for the broker and carry on when it comes. Topics missing with
creation disabled stop the edge with a clear message, at start-up or when Kafka first answers.

The bridge is started before the peer server and outlives it: the root supervisor nests the peer
server inside, so on shutdown every session has queued its `disconnected` event, and the producer has
drained the channel, before Kafka clients are closed.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from functools import partial
from typing import Final

import structlog
import trio

from edge.config import ConfigError, Settings
from edge.handoff import EventReceiver, EventSender, PeerDirectory
from edge.kafka.backoff import RandomSource
from edge.kafka.commands import CommandParser
from edge.kafka.consumer import CommandIntake, serve_command_consumer
from edge.kafka.offsets import OffsetTracker
from edge.kafka.presence import serve_presence
from edge.kafka.producer import serve_event_producer
from edge.kafka.router import CommandRouter
from edge.kafka.topics import ensure_topics
from edge.ops.metrics import EdgeMetrics
from edge.ops.readiness import KafkaState

log = structlog.get_logger(__name__)

#: Deadline of the start-up topic check: past it Kafka counts as down and the edge starts anyway.
STARTUP_CHECK_TIMEOUT_SEC: Final = 5.0
#: Backoff of the topic check while Kafka is down.
TOPICS_RETRY_INITIAL_DELAY: Final = 0.5
TOPICS_RETRY_MAX_DELAY: Final = 5.0


async def serve_kafka_bridge(
    settings: Settings,
    events: EventReceiver,
    dead_letters: EventSender,
    registry: PeerDirectory,
    state: KafkaState,
    now: Callable[[], datetime.datetime],
    *,
    metrics: EdgeMetrics,
    random: RandomSource | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bridge until cancelled.

    `events` is the receive end of the event channel (the bridge owns it); `dead_letters` a clone of
    its send end for dead letters (the bridge owns and closes it).
    """
    async with dead_letters:
        topics_ready = trio.Event()
        if await _first_topic_check(settings):
            topics_ready.set()
        # The command path, in its order: the intake (offsets, window), the router that settles into
        # it, the parser; the consumer gets all three.
        intake = CommandIntake(OffsetTracker(), settings.kafka_max_pending_commands)
        router = CommandRouter(
            settings, registry, dead_letters, intake.settle, now, random=random, presence=registry.presence, metrics=metrics
        )
        parser = CommandParser(max_message_bytes=settings.grpc_max_message_bytes)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report_readiness, state)
            await nursery.start(partial(serve_event_producer, metrics=metrics), settings, events, state, topics_ready)
            await nursery.start(router.serve)
            await nursery.start(serve_presence, settings, registry, state, topics_ready)
            if not topics_ready.is_set():
                nursery.start_soon(_check_topics_until_done, settings, topics_ready)
            nursery.start_soon(
                partial(_serve_commands, metrics=metrics), topics_ready, settings, intake, router, parser, state, now
            )
            task_status.started()


async def _first_topic_check(settings: Settings) -> bool:
    """True when the topics are there; False when Kafka did not answer in time. Raises ConfigError."""
    try:
        await ensure_topics(settings, timeout=min(settings.kafka_request_timeout_sec, STARTUP_CHECK_TIMEOUT_SEC))
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - Kafka away (a timeout too): start anyway, not ready
        log.warning("kafka_unavailable_at_start", bootstrap=settings.kafka_bootstrap_servers, error=_describe(error))
        return False
    return True


async def _check_topics_until_done(settings: Settings, done: trio.Event) -> None:
    delay = TOPICS_RETRY_INITIAL_DELAY
    while True:
        await trio.sleep(delay)
        try:
            await ensure_topics(settings, timeout=settings.kafka_request_timeout_sec)
        except ConfigError:
            log.error("kafka_topics_unusable", detail="the edge cannot run with these topics; stopping")
            raise
        except Exception as error:  # noqa: BLE001 - still away (or timed out): try again later
            log.info("kafka_still_unavailable", error=_describe(error), retry_in=delay)
            delay = min(delay * 2, TOPICS_RETRY_MAX_DELAY)
        else:
            done.set()
            return


async def _serve_commands(
    topics_ready: trio.Event,
    settings: Settings,
    intake: CommandIntake,
    router: CommandRouter,
    parser: CommandParser,
    state: KafkaState,
    now: Callable[[], datetime.datetime],
    *,
    metrics: EdgeMetrics,
) -> None:
    """The command consumer, once the topics are known to exist."""
    await topics_ready.wait()
    await serve_command_consumer(settings, intake, router, parser, state, now, metrics=metrics)


async def _report_readiness(state: KafkaState) -> None:
    ready = state.ready
    while True:
        changed = state.changed
        await changed.wait()
        if state.ready != ready:
            ready = state.ready
            log.info(
                "kafka_ready" if ready else "kafka_not_ready",
                producer=state.producer_connected,
                consumer=state.consumer_connected,
            )


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]

