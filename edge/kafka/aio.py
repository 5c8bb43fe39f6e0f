"""The asyncio side of the bridge: thin coroutines over aiokafka, called from Trio in batches.

Everything in this module runs on the trio-asyncio loop and is entered from Trio through
`trio_asyncio.aio_as_trio`. Each entry point does a whole batch per crossing (RISKS 10), awaits every
future it creates, and stops every client it starts (RISKS 9), so nothing un-awaited can reach the
loop's exception handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer

from edge.config import Settings
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)


def producer_options(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": f"giggityflix-edge-{settings.edge_id}",
        "acks": "all",
        "enable_idempotence": settings.kafka_enable_idempotence,
        "request_timeout_ms": int(settings.kafka_request_timeout_sec * 1000),
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "retry_backoff_ms": 200,
    }


class AioProducer:
    """One started AIOKafkaProducer. Create and use only on the asyncio side."""

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(**producer_options(settings))

    async def start(self) -> None:
        try:
            await self._producer.start()
        except BaseException:
            # A failed start leaves connections and tasks behind; stop cleans them up.
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_batch(self, records: Sequence[OutboundRecord]) -> list[OutboundRecord]:
        """Produce `records` in order; wait for every ack. Returns the records that failed."""
        futures: list[asyncio.Future[Any]] = []
        failed_to_queue: list[OutboundRecord] = []
        for index, record in enumerate(records):
            try:
                futures.append(
                    await self._producer.send(record.topic, record.encode_value(), key=record.encode_key())
                )
            except Exception as error:  # noqa: BLE001 - reported to the Trio side as a failed record
                log.warning("kafka_send_failed", topic=record.topic, error=repr(error))
                failed_to_queue = list(records[index:])
                break
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [
            record for record, result in zip(records, results) if isinstance(result, BaseException)
        ]
        for result in results:
            if isinstance(result, BaseException):
                log.warning("kafka_produce_failed", error=repr(result))
                break
        return failed + failed_to_queue
