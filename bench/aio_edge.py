"""`python -m bench.aio_edge`: the stack a user would pick instead of the edge, for the comparison rows.

grpcio's `grpc.aio` server and aiokafka under plain asyncio, written the way their documentation shows,
implementing the contract path the bench measures (docs/protocol.md), from the same proto
(`edge.proto.pb`), with the same certificate and key and the same environment as `python -m edge run`:
- registration: the `registration_response`, then a `connected` lifecycle record and the full catalog;
- peer messages: file hash, delete and remap responses become records on their topics (key: peer id);
- commands: read from `edge-commands-{EDGE_ID}` in group `KAFKA_GROUP_ID`; file_hash and file_delete go
  to the peer's stream, anything else (or a peer not connected) to the dead-letter topic; offsets are
  committed once every command of a fetched batch was written to its stream or dead-lettered;
- heartbeats to every peer each HEARTBEAT_INTERVAL_SEC; a peer's stream ending publishes `disconnected`
  (`stream_closed`); SIGTERM publishes `disconnected` (`shutdown`) for every peer, flushes, then exits.
Left out (not on the measured path): authentication, admission limits, peer timeouts, replaced
sessions, held commands, retries. Its log is JSON lines on stderr; `edge_started` carries the port, as
the edge's does, so bench.edgeproc runs either.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Final

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from edge.config import Settings
from edge.kafka.aio import producer_options
from edge.proto import SERVICE_NAME, pb

#: Messages waiting for one peer's stream (commands and heartbeats).
OUTBOX: Final = 1024
#: Fetched command batches whose writes are awaited before their offsets are committed.
COMMITS_IN_FLIGHT: Final = 16
#: Record topic (environment variable) of each peer payload published as an event.
EVENT_TOPICS: Final = {
    "file_hash_response": "KAFKA_FILE_HASH_RESPONSES_TOPIC",
    "file_delete_response": "KAFKA_FILE_DELETE_RESPONSES_TOPIC",
    "file_remap_response": "KAFKA_FILE_REMAP_RESPONSES_TOPIC",
}


def log(event: str, level: str = "info", **fields: Any) -> None:
    print(json.dumps({"event": event, "level": level, **fields}), file=sys.stderr, flush=True)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_record(peer_id: str, edge_id: str, message: pb.PeerMessage) -> dict[str, Any] | None:
    """The Kafka record of a peer's response (docs/protocol.md, "Responses"), or None for other payloads."""
    kind = message.WhichOneof("payload")
    record: dict[str, Any] = {"peer_id": peer_id, "edge_id": edge_id, "timestamp": now()}
    if message.request_id:
        record["request_id"] = message.request_id
    if kind == "file_hash_response":
        r = message.file_hash_response
        return record | {"catalog_uuid": r.catalog_uuid, "hashes": dict(r.hashes), "error_message": r.error_message}
    if kind == "file_delete_response":
        d = message.file_delete_response
        return record | {"catalog_uuid": d.catalog_uuid, "success": d.success, "error_message": d.error_message}
    if kind == "file_remap_response":
        m = message.file_remap_response
        return record | {"new_catalog_uuid": m.new_catalog_uuid, "success": m.success, "error_message": m.error_message}
    return None


def command_message(command: dict[str, Any]) -> pb.EdgeMessage | None:
    """The EdgeMessage of a file_hash or file_delete command, or None (dead-lettered)."""
    data, request_id = command.get("command_data") or {}, command.get("request_id") or str(uuid.uuid4())
    if command.get("command_type") == "file_hash":
        return pb.EdgeMessage(request_id=request_id, file_hash_request=pb.FileHashRequest(
            catalog_uuid=data.get("catalog_uuid", ""), hash_types=data.get("hash_types", [])))
    if command.get("command_type") == "file_delete":
        return pb.EdgeMessage(request_id=request_id, file_delete_request=pb.FileDeleteRequest(
            catalog_uuids=data.get("catalog_uuids", [])))
    return None


class Session:
    def __init__(self, peer_id: str, epoch: int) -> None:
        self.peer_id = peer_id
        self.session_id = str(uuid.uuid4())
        self.epoch = epoch
        #: (message, future set once written or None).
        self.outbox: asyncio.Queue[tuple[pb.EdgeMessage, asyncio.Future[None] | None]] = asyncio.Queue(OUTBOX)
        self.ended = False


class AioEdge:
    def __init__(self, env: dict[str, str], producer: AIOKafkaProducer) -> None:
        self.edge_id = env["EDGE_ID"]
        self.env = env
        self.producer = producer
        self.heartbeat_sec = float(env.get("HEARTBEAT_INTERVAL_SEC", "30"))
        self.sessions: dict[str, Session] = {}
        self.epochs = itertools.count(1)
        self.send_failures = 0

    async def publish(self, topic: str, peer_id: str | None, record: dict[str, Any]) -> None:
        """Hand a record to the producer (which batches it); a failed delivery is counted and logged."""
        key = peer_id.encode() if peer_id else None
        future = await self.producer.send(topic, json.dumps(record, separators=(",", ":")).encode(), key=key)
        future.add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.send_failures += 1
            log("kafka_send_failed", "error", error=repr(future.exception()))

    async def lifecycle(self, session: Session, event_type: str, reason: str | None = None) -> None:
        if session.ended:
            return
        record = {"peer_id": session.peer_id, "edge_id": self.edge_id, "timestamp": now(), "event_type": event_type,
                  "session_id": session.session_id, "epoch": session.epoch}
        if reason is not None:
            session.ended = True
            record["reason"] = reason
        await self.publish(self.env["KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC"], session.peer_id, record)

    async def connect(self, _requests: Any, context: grpc.aio.ServicerContext) -> None:
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("payload") != "registration_request":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be a registration_request")
        request = first.registration_request
        session = Session(request.peer_name, next(self.epochs))
        await context.write(pb.EdgeMessage(request_id=first.request_id, registration_response=pb.PeerRegistrationResponse(
            peer_name=request.peer_name, edge_name=self.edge_id, success=True)))
        self.sessions[session.peer_id] = session
        await self.lifecycle(session, "connected")
        await self.publish(self.env["KAFKA_PEER_CATALOG_UPDATES_TOPIC"], session.peer_id, {
            "peer_id": session.peer_id, "edge_id": self.edge_id, "timestamp": now(), "request_id": first.request_id,
            "update_type": "full", "catalog_ids": list(request.catalog_uuids), "is_full_update": True,
            "session_id": session.session_id, "part": 1, "parts": 1})
        writer = asyncio.create_task(self._write(context, session))
        heartbeats = asyncio.create_task(self._heartbeats(session))
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                kind = message.WhichOneof("payload")
                if kind in EVENT_TOPICS:
                    record = event_record(session.peer_id, self.edge_id, message)
                    await self.publish(self.env[EVENT_TOPICS[kind]], session.peer_id, record or {})
        finally:
            heartbeats.cancel()
            writer.cancel()
            if self.sessions.get(session.peer_id) is session:
                del self.sessions[session.peer_id]
            await self.lifecycle(session, "disconnected", "stream_closed")
            while not session.outbox.empty():  # commands not written: dead letters, so their offsets commit
                message, written = session.outbox.get_nowait()
                if written is not None:
                    await self.dead_letter({"peer_id": session.peer_id, "request_id": message.request_id},
                                           "peer_disconnected", None)
                    written.set_result(None)

    async def _write(self, context: grpc.aio.ServicerContext, session: Session) -> None:
        while True:
            message, written = await session.outbox.get()
            await context.write(message)
            if written is not None:
                written.set_result(None)

    async def _heartbeats(self, session: Session) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_sec)
            beat = pb.EdgeMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=time.time_ns() // 1_000_000))
            await session.outbox.put((beat, None))

    async def commands(self, consumer: AIOKafkaConsumer) -> None:
        """Deliver commands; commit a batch's offsets once each of its commands was written or dead-lettered."""
        pending: asyncio.Queue[tuple[list[Awaitable[Any]], dict[Any, int]]] = asyncio.Queue(COMMITS_IN_FLIGHT)

        async def commit() -> None:
            while True:
                writes, offsets = await pending.get()
                await asyncio.gather(*writes)
                await consumer.commit(offsets)

        committer = asyncio.create_task(commit())
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                writes: list[Awaitable[Any]] = []
                offsets = {}
                for tp, records in batches.items():
                    for record in records:
                        writes.append(await self.command_record(record))
                    offsets[tp] = records[-1].offset + 1
                if offsets:
                    await pending.put((writes, offsets))
        finally:
            committer.cancel()

    async def command_record(self, record: Any) -> Awaitable[Any]:
        try:
            command = json.loads(record.value)
        except ValueError:
            command = {}
        session = self.sessions.get(command.get("peer_id", ""))
        message = command_message(command) if isinstance(command, dict) else None
        if session is None or message is None:
            return await self.dead_letter(command, "peer_not_connected" if message is not None else "invalid_command", record)
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await session.outbox.put((message, written))
        return written

    async def dead_letter(self, command: dict[str, Any], reason: str, record: Any) -> asyncio.Future[Any]:
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset} if record else {}
        value = {"original_message": command, "reason": reason, **where, "peer_id": command.get("peer_id"),
                 "edge_id": self.edge_id, "timestamp": now()}
        key = str(command.get("peer_id")).encode() if command.get("peer_id") else None
        return await self.producer.send(self.env["DEADLETTER_TOPIC"], json.dumps(value).encode(), key=key)

    async def shutdown(self) -> None:
        """`disconnected` (shutdown) for every peer held, flushed to Kafka."""
        for session in list(self.sessions.values()):
            await self.lifecycle(session, "disconnected", "shutdown")
        await self.producer.flush()


async def main(env: dict[str, str], key_and_cert: tuple[bytes, bytes]) -> None:
    edge_id = env["EDGE_ID"]
    env.setdefault("DEADLETTER_TOPIC", f"edge-commands-{edge_id}.deadletter")
    settings = Settings(kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], edge_id=edge_id)
    producer = AIOKafkaProducer(**producer_options(settings))
    consumer = AIOKafkaConsumer(f"edge-commands-{edge_id}", bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                                group_id=env.get("KAFKA_GROUP_ID", "edge-service"), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    edge = AioEdge(env, producer)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Connect": grpc.stream_stream_rpc_method_handler(
            edge.connect, request_deserializer=pb.PeerMessage.FromString,
            response_serializer=pb.EdgeMessage.SerializeToString),
    })])
    credentials = grpc.ssl_server_credentials([key_and_cert])
    port = server.add_secure_port(env.get("GRPC_SERVER_ADDRESS", "127.0.0.1:0"), credentials)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    commands = asyncio.create_task(edge.commands(consumer))
    log("edge_started", port=port, implementation="grpc.aio")
    await stop.wait()
    await edge.shutdown()
    await server.stop(grace=None)  # every `disconnected` is flushed already: end the streams now
    commands.cancel()
    await consumer.stop()
    await producer.stop()
    log("edge_stopped", send_failures=edge.send_failures)


if __name__ == "__main__":
    environment = dict(os.environ)
    asyncio.run(main(environment, (Path(environment["GRPC_KEY_PATH"]).read_bytes(),
                                   Path(environment["GRPC_CERT_PATH"]).read_bytes())))
