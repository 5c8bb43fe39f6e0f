"""Test-side Kafka helpers: produce, consume and create topics with aiokafka, called from Trio.

Each helper opens its own trio-asyncio loop (nesting inside a test's own loop is fine), installs an
exception handler that logs instead of tearing the loop down (docs/design.md#trio-asyncio-handler-reraises),
does all its asyncio work in one `aio_as_trio` crossing, awaits every send future, stops every client it
starts, and bounds everything with a deadline: an asyncio-side timeout that ends the work cleanly, and a
Trio-side one a little later as a backstop (a cancel crossing into asyncio can return late,
docs/design.md#trio-asyncio-late-cancel).

These talk to real brokers, so tests using them must run on the real clock, never MockClock
(docs/design.md#mock-clock-real-io).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import structlog
import trio
import trio_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_SEC: Final = 30.0
#: Extra time the Trio-side deadline allows for the asyncio side to stop its clients.
CLEANUP_GRACE_SEC: Final = 15.0
POLL_MS: Final = 200

Key = str | bytes | None
Value = Any  # dict/list/number -> JSON, str -> UTF-8, bytes -> as is, None -> tombstone


class Record(NamedTuple):
    """One consumed record: key (UTF-8 text or None), value (parsed JSON, or bytes when raw), position."""

    key: str | None
    value: Any
    partition: int
    offset: int


class Partition(NamedTuple):
    """One partition as Metadata describes it: leader (-1 while it has none), replicas, in-sync replicas."""

    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class Sent(NamedTuple):
    partition: int
    offset: int


class NotEnoughRecords(AssertionError):
    """`consume_records` timed out before `count` records arrived. `.records` holds what did."""

    def __init__(self, topic: str, count: int, records: list[Record], timeout: float) -> None:
        super().__init__(
            f"{len(records)} of {count} records from {topic!r} within {timeout:g} s: {records!r}"
        )
        self.records = records


def encode_key(key: Key) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def encode_value(value: Value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.warning("test_kafka_asyncio_error", message=context.get("message"), error=repr(error))


async def _in_loop(timeout: float, fn: Any, *args: Any) -> Any:
    """Run the asyncio coroutine function `fn(*args)` in a fresh trio-asyncio loop, bounded.

    A failure of `fn` is raised after the loop has closed, as itself: raised inside, it would come out
    wrapped in an ExceptionGroup by the loop's nursery, and tests want to `pytest.raises` the real error.
    """
    failure: Exception | None = None
    with trio.fail_after(timeout + CLEANUP_GRACE_SEC):
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_loop_exception)
            try:
                result = await trio_asyncio.aio_as_trio(fn)(*args)
            except Exception as error:  # noqa: BLE001 - re-raised below, outside the loop's nursery
                failure = error
    if failure is not None:
        raise failure
    return result


# --- asyncio side ----------------------------------------------------------------------------


async def _aio_create_topics(
    bootstrap: str, names: Sequence[str], partitions: int, replicas: int, timeout: float
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            topics = [NewTopic(name, num_partitions=partitions, replication_factor=replicas) for name in names]
            try:
                response = await admin.create_topics(topics)
            except TopicAlreadyExistsError:
                return
            for topic_error in getattr(response, "topic_errors", ()):
                name, code = topic_error[0], topic_error[1]
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise RuntimeError(
                        f"create_topics {name!r} failed with error code {code}: {topic_error!r}"
                    )
    finally:
        await admin.close()


async def _aio_produce(
    bootstrap: str, topic: str, records: Sequence[tuple[Key, Value]], idempotent: bool, timeout: float
) -> list[Sent]:
    options: dict[str, Any] = {"enable_idempotence": True} if idempotent else {"acks": "all"}
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **options
    )
    futures: list[asyncio.Future[Any]] = []
    try:
        async with asyncio.timeout(timeout):
            await producer.start()
            for key, value in records:
                futures.append(await producer.send(topic, encode_value(value), key=encode_key(key)))
            results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await producer.stop()  # flushes: every future is settled after this
        for future in futures:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, so no "exception was never retrieved" later
    sent = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        sent.append(Sent(result.partition, result.offset))
    return sent


async def _aio_consume(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float,
    group_id: str | None,
    commit: bool,
    decode_json: bool,
    session_timeout_ms: int,
) -> list[Record]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        session_timeout_ms=session_timeout_ms,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(timeout * 1000) + 5000,
    )
    records: list[Record] = []
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await consumer.start()
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=POLL_MS)
                for messages in batches.values():
                    for message in messages:
                        value: Any = message.value
                        if decode_json and value is not None:
                            value = json.loads(value)
                        key = message.key.decode() if message.key is not None else None
                        records.append(Record(key, value, message.partition, message.offset))
            if commit and group_id is not None:
                await consumer.commit()
    except TimeoutError:
        if not deadline.expired():
            raise
        raise NotEnoughRecords(topic, count, records, timeout) from None
    finally:
        await consumer.stop()
    return records


async def _aio_group_offsets(
    bootstrap: str, group_id: str, topic: str, timeout: float
) -> tuple[dict[int, tuple[int, str]], dict[int, int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            await consumer.start()
            [described] = await admin.describe_topics([topic])
            partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
            ends = await consumer.end_offsets(partitions)
            found = await admin.list_consumer_group_offsets(group_id, partitions=partitions)
    finally:
        await consumer.stop()
        await admin.close()
    committed = {tp.partition: (meta.offset, meta.metadata) for tp, meta in found.items() if meta.offset >= 0}
    return committed, {tp.partition: offset for tp, offset in ends.items()}


async def _aio_describe_partitions(bootstrap: str, topics: Sequence[str], timeout: float) -> list[Partition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return sorted(
        Partition(t["topic"], p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
        for t in described
        for p in t["partitions"]
    )


async def _aio_group_coordinator(bootstrap: str, group_id: str, timeout: float) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            return await admin.find_coordinator(group_id)
    finally:
        await admin.close()


# --- Trio side -------------------------------------------------------------------------------


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    *,
    replicas: int = 1,
    timeout: float = DEFAULT_TIMEOUT_SEC,
) -> None:
    """Create topics with the admin client; ones that already exist are fine."""
    await _in_loop(timeout, _aio_create_topics, bootstrap, list(names), partitions, replicas, timeout)


async def produce_records(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[Key, Value]],
    *,
    idempotent: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SEC,
) -> list[Sent]:
    """Produce (key, value) pairs in order with acks=all; wait for every ack; return their positions.

    Values: dict/list/number are JSON-encoded, str is UTF-8, bytes go as they are. `idempotent=True`
    needs a broker that allows it (see the `kafka_supports_idempotence` fixture).
    """
    return await _in_loop(timeout, _aio_produce, bootstrap, topic, list(records), idempotent, timeout)


async def consume_records(
    bootstrap: str,
    topic: str,
    *,
    count: int,
    timeout: float = DEFAULT_TIMEOUT_SEC,
    group_id: str | None = None,
    commit: bool = False,
    decode_json: bool = True,
    session_timeout_ms: int = 10_000,
) -> list[Record]:
    """Read `topic` from the earliest offset until at least `count` records arrived; return them all.

    Returns every record received by then (more than `count` if they came in the same fetch), in
    partition order. Raises NotEnoughRecords (an AssertionError carrying `.records`) after `timeout`.
    Without `group_id` no group is joined and nothing is committed; with one, `commit=True` commits
    what was read. Values are parsed as JSON unless `decode_json=False` (then bytes).

    On the embedded Tansu broker a group join takes session_timeout_ms / 2, and a consumer of the
    group's first generation does not leave the group when it stops (Tansu numbers that generation 0,
    and aiokafka only sends LeaveGroup for generations above 0), so the next join of the same group
    also waits for that member's session to expire.
    """
    return await _in_loop(
        timeout,
        _aio_consume,
        bootstrap,
        topic,
        count,
        timeout,
        group_id,
        commit,
        decode_json,
        session_timeout_ms,
    )


async def group_offsets(
    bootstrap: str, group_id: str, topic: str, *, timeout: float = DEFAULT_TIMEOUT_SEC
) -> tuple[dict[int, tuple[int, str]], dict[int, int]]:
    """({partition: (committed offset, metadata)}, {partition: end offset}) of `group_id` on `topic`."""
    return await _in_loop(timeout, _aio_group_offsets, bootstrap, group_id, topic, timeout)


async def topic_partitions(bootstrap: str, topic: str, *, timeout: float = DEFAULT_TIMEOUT_SEC) -> list[int]:
    """The partition numbers of an existing topic."""
    return [p.partition for p in await describe_partitions(bootstrap, [topic], timeout=timeout)]


async def describe_partitions(
    bootstrap: str, topics: Iterable[str], *, timeout: float = DEFAULT_TIMEOUT_SEC
) -> list[Partition]:
    """Every partition of `topics`: leader, replicas and in-sync replicas, sorted by topic and number."""
    return await _in_loop(timeout, _aio_describe_partitions, bootstrap, list(topics), timeout)


async def wait_until_committed(
    bootstrap: str, group_id: str, topic: str, *, timeout: float = DEFAULT_TIMEOUT_SEC
) -> dict[int, tuple[int, str]]:
    """Poll (every 0.2 s, under `timeout`) until the group has committed every partition's end offset."""
    with trio.fail_after(timeout):
        while True:
            try:
                committed, ends = await group_offsets(bootstrap, group_id, topic)
            except KafkaError:  # e.g. the group coordinator is still loading: ask again
                committed, ends = {}, {}
            if ends and all(committed.get(p, (-1, ""))[0] == end for p, end in ends.items() if end > 0):
                return committed
            await trio.sleep(0.2)


async def group_coordinator(bootstrap: str, group_id: str, *, timeout: float = DEFAULT_TIMEOUT_SEC) -> int:
    """The node id of the broker coordinating `group_id` (the leader of its __consumer_offsets partition)."""
    return await _in_loop(timeout, _aio_group_coordinator, bootstrap, group_id, timeout)
