"""Start-up check of the topics the edge needs: they exist, or are created, or the edge refuses to run.

    required_topics(settings)   the command topic, the dead-letter topic and every event topic
    missing_topics(...)         pure: which of them the cluster lacks
    ensure_topics(settings)     Trio: one admin crossing that lists topics and creates the missing
                                ones (KAFKA_CREATE_TOPICS, with KAFKA_TOPIC_PARTITIONS partitions and
                                KAFKA_TOPIC_REPLICATION_FACTOR replicas), under a deadline
    replication_factor(...)     pure: the replicas of a new topic; KAFKA_TOPIC_REPLICATION_FACTOR=auto
                                (0) is min(3, the brokers the cluster's Metadata lists at creation)

Topics are listed with a Metadata request for *all* topics, which never auto-creates one (a request
naming a topic can, on brokers with `auto.create.topics.enable`, and would create it with the broker's
defaults instead of ours). Topics that exist are left as they are, whatever their partition count.
With KAFKA_CREATE_TOPICS=false a missing topic is a `TopicsMissing` error (a ConfigError: the CLI
prints one line and exits with code 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import structlog
import trio
import trio_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from edge.config import ConfigError, Settings

log = structlog.get_logger(__name__)

#: KAFKA_TOPIC_REPLICATION_FACTOR=auto gives new topics this many replicas, fewer on a smaller cluster.
AUTO_REPLICATION_FACTOR: Final = 3


class TopicsMissing(ConfigError):
    """Topics the edge needs do not exist and it may not create them."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = sorted(missing)
        super().__init__(
            "KAFKA_CREATE_TOPICS",
            "true, or these topics created before the edge starts: " + ", ".join(self.missing),
            "false",
        )


class TopicCreationFailed(ConfigError):
    """The broker refused to create a topic (replication factor, policy, authorization...)."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        shown = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        super().__init__(
            "KAFKA_TOPIC_REPLICATION_FACTOR",
            f"settings the cluster accepts for new topics (it refused: {shown})",
        )


def required_topics(settings: Settings) -> list[str]:
    """Every topic the edge reads or writes, without repeats, in a stable order."""
    names = [settings.commands_topic, *settings.produced_topics()]
    return list(dict.fromkeys(names))


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    """Configs of a topic the edge creates: the presence topic is compacted (one record per peer)."""
    return {"cleanup.policy": "compact"} if name == settings.kafka_peer_presence_topic else {}


def missing_topics(existing: Iterable[str], required: Iterable[str]) -> list[str]:
    present = set(existing)
    return [name for name in required if name not in present]


def replication_factor(setting: int, brokers: int) -> int:
    """Replicas for a new topic: the setting, or for 0 (auto) min(3, `brokers`), at least 1.

    `brokers` is what Metadata lists: the live brokers. A cluster with a broker down while the edge
    creates its topics gets one replica fewer than it would have had."""
    if setting > 0:
        return setting
    return max(1, min(AUTO_REPLICATION_FACTOR, brokers))


async def _aio_ensure_topics(settings: Settings) -> tuple[list[str], int]:
    """List topics; create the missing ones if allowed. The names created and their replicas."""
    required = required_topics(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"giggityflix-edge-{settings.edge_id}-topics",
        request_timeout_ms=int(settings.kafka_request_timeout_sec * 1000),
    )
    try:
        await admin.start()
        missing = missing_topics(await admin.list_topics(), required)
        replicas = settings.kafka_topic_replication_factor
        if not missing:
            return [], replicas
        if not settings.kafka_create_topics:
            raise TopicsMissing(missing)
        if replicas == 0:
            replicas = replication_factor(0, len((await admin.describe_cluster())["brokers"]))
        topics = [
            NewTopic(
                name,
                num_partitions=settings.kafka_topic_partitions,
                replication_factor=replicas,
                topic_configs=topic_configs(settings, name),
            )
            for name in missing
        ]
        try:
            response: Any = await admin.create_topics(topics)
        except TopicAlreadyExistsError:
            return [], replicas  # another edge created them first
        problems: dict[str, str] = {}
        created: list[str] = []
        for topic_error in getattr(response, "topic_errors", ()):
            name, code = topic_error[0], topic_error[1]
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:  # created meanwhile (another edge): fine
                message = topic_error[2] if len(topic_error) > 2 and topic_error[2] else for_code(code).__name__
                problems[name] = str(message)
        if problems:
            raise TopicCreationFailed(problems)
        return created, replicas
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, timeout: float) -> list[str]:
    """Make sure every topic the edge needs exists (one crossing, under `timeout`).

    Returns the topics created. Raises TopicsMissing / TopicCreationFailed (the edge must not run
    like this), or trio.TooSlowError / a KafkaError / OSError while Kafka cannot be reached.
    """
    with trio.fail_after(timeout):
        outcome: tuple[list[str], int] = await trio_asyncio.aio_as_trio(_aio_ensure_topics)(settings)
    created, replicas = outcome
    if created:
        log.info(
            "kafka_topics_created",
            topics=created,
            partitions=settings.kafka_topic_partitions,
            replication_factor=replicas,
        )
    else:
        log.info("kafka_topics_present", topics=required_topics(settings))
    return created

