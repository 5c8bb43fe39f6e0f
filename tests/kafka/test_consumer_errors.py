"""What ends the command consumer: a failure of Kafka restarts it, a bug in the edge's own code does not.

Rules: a real broker (the consumer is aiokafka's, so what reaches `_dispatch` is what Kafka delivered);
no sleeps, every wait has a deadline.
"""

from __future__ import annotations

import pytest
import structlog
import trio
import trio_asyncio

from edge.config import settings_for_tests
from edge.kafka.commands import Source
from edge.kafka.consumer import CommandIntake, serve_command_consumer
from edge.kafka.offsets import OffsetTracker
from edge.kafka.router import CommandRouter
from edge.nursery import utc_now
from edge.ops.metrics import EdgeMetrics
from edge.ops.readiness import KafkaState
from edge.handoff import open_event_channel
from testing.kafka.client import create_topics, produce_records
from tests.kafka.support import command

pytestmark = pytest.mark.kafka


class BuggyParser:
    """`CommandParser.parse` never raises; this one does, as a bug in dispatch would."""

    def parse(self, data: bytes | None, source: Source, now: object) -> None:
        raise RuntimeError("a bug in dispatch")


class NoPeers:
    def lookup(self, peer_id: str) -> None:
        return None


async def test_a_bug_in_dispatch_ends_the_consumer_instead_of_a_reconnect(kafka_bootstrap, kafka_topic_prefix):
    """The consumer reads a command and dispatching it raises: the error propagates out of
    `serve_command_consumer` (after the consumer was stopped cleanly), not into a reconnect loop."""
    settings = settings_for_tests(
        edge_id=kafka_topic_prefix,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_group_id=f"{kafka_topic_prefix}-group",
        kafka_session_timeout_sec=6.0,
        kafka_request_timeout_sec=10.0,
    )
    await create_topics(kafka_bootstrap, [settings.commands_topic])
    await produce_records(kafka_bootstrap, settings.commands_topic, [("peer-b", command("peer-b", "r-1"))])
    metrics = EdgeMetrics.create()
    intake = CommandIntake(OffsetTracker(), settings.kafka_max_pending_commands)
    dead_letters, _unused = open_event_channel(10, 64 * 1024 * 1024)
    router = CommandRouter(settings, NoPeers(), dead_letters, intake.settle, utc_now, metrics=metrics)
    with structlog.testing.capture_logs() as logs, pytest.raises(ExceptionGroup) as raised:
        with trio.fail_after(60):  # a reconnect loop would never end: fail instead of hanging
            async with trio_asyncio.open_loop():
                async with trio.open_nursery() as nursery:
                    await nursery.start(router.serve)
                    await serve_command_consumer(
                        settings, intake, router, BuggyParser(), KafkaState(), utc_now, metrics=metrics  # type: ignore[arg-type]
                    )
    assert raised.group_contains(RuntimeError, match="a bug in dispatch")
    events = [entry["event"] for entry in logs]
    assert "kafka_consumer_stopped" in events and "kafka_consumer_failed" not in events
    assert metrics.registry.get_sample_value("giggityflix_edge_commands_received_total") == 1  # read once, no restart
