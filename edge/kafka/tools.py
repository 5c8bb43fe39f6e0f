"""Kafka for the operator tools (`send-command`, `tail`): aiokafka on a trio-asyncio loop.

As everywhere in the edge, asyncio stays in edge/kafka/ and the boundary is crossed in batches: one
crossing sends a command, one crossing fetches whatever records are ready. Every client is stopped
and every call has a deadline (docs/design.md#trio-asyncio-handler-reraises, #trio-asyncio-late-cancel,
#aiokafka-hangs).

`tail` reads without a consumer group (aiokafka assigns itself every partition of the topics): it
never commits, never joins the edge's group, and can run any number of times next to the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import structlog
import trio
import trio_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

log = structlog.get_logger(__name__)


class TailRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.warning("kafka_tool_asyncio_error", message=context.get("message"), error=repr(error) if error else None)


@contextlib.asynccontextmanager
async def _loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_loop_exception)
        yield


async def _aio_send(bootstrap: str, topic: str, key: bytes, value: bytes, timeout: float) -> tuple[int, int]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=int(timeout * 1000), client_id="giggityflix-edge-send-command"
    )
    try:
        async with asyncio.timeout(timeout):
            await producer.start()
            metadata = await producer.send_and_wait(topic, value, key=key)
            return metadata.partition, metadata.offset
    finally:
        await producer.stop()


async def send_record(bootstrap: str, topic: str, key: bytes, value: bytes, *, timeout: float) -> tuple[int, int]:
    """Produce one record (acks=all); return its (partition, offset). Raises on failure or timeout."""
    failure: Exception | None = None
    result = (-1, -1)
    with trio.fail_after(timeout + 15):  # the asyncio-side deadline ends it first; this is a backstop
        async with _loop():
            try:
                result = await trio_asyncio.aio_as_trio(_aio_send)(bootstrap, topic, key, value, timeout)
            except Exception as error:  # noqa: BLE001 - re-raised outside the loop's nursery, as itself
                failure = error
    if failure is not None:
        raise failure
    return result


class _AioTail:
    """A group-less consumer over several topics. Lives on the asyncio side."""

    def __init__(self, bootstrap: str, topics: Sequence[str], from_beginning: bool, timeout: float) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            request_timeout_ms=int(timeout * 1000) + 5000,
            metadata_max_age_ms=5000,  # notice topics the edge creates after tail started
            client_id="giggityflix-edge-tail",
        )

    async def start(self, timeout: float) -> None:
        started = False
        try:
            async with asyncio.timeout(timeout):
                await self._consumer.start()
            started = True
        finally:
            if not started:  # failed or cancelled: close what was opened
                await self._consumer.stop()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def fetch(self, wait_ms: int, limit: int) -> list[TailRecord]:
        batches = await self._consumer.getmany(timeout_ms=wait_ms, max_records=limit)
        records = [
            TailRecord(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value)
            for messages in batches.values()
            for m in messages
        ]
        records.sort(key=lambda r: r.timestamp_ms)
        return records


@contextlib.asynccontextmanager
async def open_tail(
    bootstrap: str, topics: Sequence[str], *, from_beginning: bool, timeout: float = 30.0
) -> AsyncIterator[Any]:
    """A started group-less consumer; `await fetch(wait_ms, limit)` returns what is ready (maybe [])."""
    async with _loop():
        tail = _AioTail(bootstrap, topics, from_beginning, timeout)
        with trio.fail_after(timeout + 15):
            await trio_asyncio.aio_as_trio(tail.start)(timeout)
        try:

            async def fetch(wait_ms: int = 500, limit: int = 500) -> list[TailRecord]:
                with trio.fail_after(timeout + wait_ms / 1000):
                    records: list[TailRecord] = await trio_asyncio.aio_as_trio(tail.fetch)(wait_ms, limit)
                    return records

            yield fetch
        finally:
            with trio.move_on_after(timeout, shield=True):
                await trio_asyncio.aio_as_trio(tail.stop)()
