"""The peer side over real sockets: grpcio peers over TLS, a real Kafka broker (docs/protocol.md#registration,
#endings, #kafka-contract, #bad-input).

Rules: `edge.serve` on a real TLS port (testing/harness.py), real grpcio clients (testing/grpcio_peer.py,
or a killed client process), records read back from the real broker. Real clock; waits are for
conditions under deadlines. The one timed ending (`timeout`) uses HEARTBEAT_INTERVAL_SEC=1 /
PEER_TIMEOUT_SEC=2 so it takes two seconds, not two minutes.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import trio
import trio.testing

from edge.peers import protocol
from edge.proto import pb
from testing.grpcio_peer import GrpcioPeer
from testing.harness import RunningEdge, running_edge
from testing.kafka.client import consume_records
from testing.settings import edge_settings
from tests.grpc.support import own_tcp_sockets

pytestmark = pytest.mark.kafka

UNKNOWN_PAYLOAD = pb.PeerMessage(request_id="newer").SerializeToString() + b"\x9a\x06\x00"
#: Over GRPC_MAX_MESSAGE_BYTES=65536 as these tests set it.
OVERSIZED = pb.PeerMessage(request_id="x" * (65 * 1024)).SerializeToString()
OVERSIZED_DETAIL = f"received message of {len(OVERSIZED)} bytes exceeds the limit of 65536 bytes"


def delete_response(request_id: str) -> pb.PeerMessage:
    return pb.PeerMessage(
        request_id=request_id, file_delete_response=pb.FileDeleteResponse(catalog_uuid="c", success=True)
    )


def unique(records: list[Any]) -> list[Any]:
    """Records with exact repeats removed. Kafka delivery is at least once: the producer re-sends the
    batch a shutdown interrupted mid-crossing, so an identical record can appear twice."""
    seen: set[tuple[str, str]] = set()
    out = []
    for record in records:
        identity = (record.key, json.dumps(record.value, sort_keys=True))
        if identity not in seen:
            seen.add(identity)
            out.append(record)
    return out


async def consume_unique(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Any]:
    """`count` distinct records from `topic` (reading again while repeats made the first read short)."""
    wanted = count
    for _ in range(3):
        records = unique(await consume_records(bootstrap, topic, count=wanted, timeout=timeout))
        if len(records) >= count:
            return records
        wanted += count - len(records)
    raise AssertionError(f"{len(records)} distinct records of {count} in {topic}")


def lifecycle_by_peer(records: list[Any]) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = collections.defaultdict(list)
    for record in unique(records):
        out[record.key].append((record.value["event_type"], record.value.get("reason")))
    return dict(out)


def parse_timestamp(text: str) -> datetime.datetime:
    assert text.endswith("Z"), text
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@contextlib.contextmanager
def production_logging(path: Path) -> Iterator[None]:
    """structlog as `python -m edge run` sets it up (JSON lines, level info: debug events are dropped
    before they are rendered), written to `path`; structlog's defaults are restored afterwards.
    Loggers are not cached, so other tests see the defaults again."""
    with open(path, "w") as out:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.PrintLoggerFactory(out),
            cache_logger_on_first_use=False,
        )
        try:
            yield
        finally:
            structlog.reset_defaults()


@contextlib.contextmanager
def grpcio_peers(edge: RunningEdge, ca_pem: bytes) -> Iterator[Callable[[], GrpcioPeer]]:
    """A maker of grpcio peers on connections of their own, each closed when the block ends."""
    made: list[GrpcioPeer] = []

    def peer() -> GrpcioPeer:
        made.append(GrpcioPeer(edge.port, root_certificates=ca_pem, own_connection=True))
        return made[-1]

    try:
        yield peer
    finally:
        for each in made:
            each.close()


async def register(peer: GrpcioPeer, peer_id: str, catalog: tuple[str, ...] = (), request_id: str = "reg") -> pb.EdgeMessage:
    peer.register(peer_id, catalog=catalog, request_id=request_id)
    return await peer.receive_kind("registration_response", timeout=30)


# ----------------------------------------------------------------------------------- every kind


async def test_every_peer_message_kind_reaches_its_topic_with_the_specs_fields(
    kafka_bootstrap: str, kafka_supports_idempotence: bool, kafka_topic_prefix: str, tls_files: Any
) -> None:
    """One grpcio peer over TLS sends one of each PeerMessage kind; each record is read back from
    Kafka, keyed by the peer id, with every field of docs/protocol.md#kafka-contract (and nothing for
    heartbeats and unknown payloads)."""
    settings = edge_settings(
        kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence, screenshot_max_bytes=1024
    )
    png = b"\x89PNG\r\n" + bytes(range(200))
    messages = [
        pb.PeerMessage(request_id="d1", file_delete_response=pb.FileDeleteResponse(catalog_uuid="c1", success=False, error_message="busy")),
        pb.PeerMessage(request_id="h1", file_hash_response=pb.FileHashResponse(catalog_uuid="c2", hashes={"sha256": "ab", "md5": "cd"})),
        pb.PeerMessage(request_id="o1", batch_file_offer_request=pb.BatchFileOfferRequest(
            files=[pb.FileOfferItem(peer_luid="l1", relative_path="a/b.mkv", size_bytes=2**40)], category_type="movie")),
        pb.PeerMessage(request_id="s1", screenshot_capture_response=pb.ScreenshotCaptureResponse(
            catalog_uuid="c3", screenshot=pb.ScreenshotData(frame_number_in_video=42, screenshot=png))),
        pb.PeerMessage(request_id="s2", screenshot_capture_response=pb.ScreenshotCaptureResponse(
            catalog_uuid="c4", screenshot=pb.ScreenshotData(frame_number_in_video=1, screenshot=b"x" * 1025))),
        pb.PeerMessage(request_id="s3", screenshot_capture_response=pb.ScreenshotCaptureResponse(catalog_uuid="c5", error_message="no video")),
        pb.PeerMessage(request_id="m1", file_remap_response=pb.FileRemapResponse(new_catalog_uuid="n1", success=True)),
        pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1)),
    ]
    async with running_edge(settings) as edge:
        with grpcio_peers(edge, tls_files.ca_pem) as new_peer:
            peer = new_peer()
            response = await register(peer, "peer-all", catalog=("u1", "u2"), request_id="reg-1")
            for message in messages:
                peer.send(message)
            peer.send(UNKNOWN_PAYLOAD)
            peer.half_close()
            status = await peer.wait_status(timeout=30)
    assert status[0] == grpc.StatusCode.OK  # (grpcio drops the message of an OK status)
    session_id = response.registration_response.session_id

    async def read(topic: str, count: int) -> list[dict[str, Any]]:
        records = await consume_unique(kafka_bootstrap, topic, count)
        assert len(records) == count and {r.key for r in records} == {"peer-all"}
        values = []
        for record in records:
            value = dict(record.value)
            assert parse_timestamp(value.pop("timestamp")).tzinfo is not None
            assert value.pop("peer_id") == "peer-all" and value.pop("edge_id") == kafka_topic_prefix
            values.append(value)
        return values

    connected, disconnected = await read(settings.kafka_peer_lifecycle_events_topic, 2)
    assert connected == {"event_type": "connected", "session_id": session_id, "epoch": connected["epoch"]}
    assert disconnected == {**connected, "event_type": "disconnected", "reason": "stream_closed"}
    assert await read(settings.kafka_peer_catalog_updates_topic, 2) == [
        {"request_id": "reg-1", "update_type": "full", "catalog_ids": ["u1", "u2"], "is_full_update": True,
         "session_id": session_id, "part": 1, "parts": 1},
        {"request_id": "o1", "update_type": "file_offer", "files": [{"peer_luid": "l1", "relative_path": "a/b.mkv", "size_bytes": 2**40}],
         "category_type": "movie", "is_full_update": False, "part": 1, "parts": 1},
    ]
    assert await read(settings.kafka_file_delete_responses_topic, 1) == [
        {"request_id": "d1", "catalog_uuid": "c1", "success": False, "error_message": "busy"}
    ]
    assert await read(settings.kafka_file_hash_responses_topic, 1) == [
        {"request_id": "h1", "catalog_uuid": "c2", "hashes": {"sha256": "ab", "md5": "cd"}, "error_message": ""}
    ]
    shots = await read(settings.kafka_screenshot_capture_responses_topic, 3)
    assert shots[0] == {"request_id": "s1", "catalog_uuid": "c3",
                        "screenshot": {"frame_number_in_video": 42, "screenshot": base64.b64encode(png).decode()}}
    assert shots[1]["request_id"] == "s2" and shots[1]["screenshot_size_bytes"] == 1025
    assert "SCREENSHOT_MAX_BYTES" in shots[1]["error_message"] and "screenshot" not in shots[1]
    assert shots[2] == {"request_id": "s3", "catalog_uuid": "c5", "error_message": "no video"}
    assert await read(settings.kafka_file_remap_responses_topic, 1) == [
        {"request_id": "m1", "new_catalog_uuid": "n1", "success": True, "error_message": ""}
    ]


# ------------------------------------------------------------------------------- every ending


async def test_every_disconnect_reason_reaches_the_lifecycle_topic(
    kafka_bootstrap: str, kafka_supports_idempotence: bool, kafka_topic_prefix: str, tls_files: Any, monkeypatch: Any
) -> None:
    """Ten sessions, one edge, each ended a different way; the lifecycle topic has each one's
    `connected` and `disconnected` with the reason, and each grpcio peer got its status
    (docs/protocol.md#endings)."""
    settings = edge_settings(
        kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence,
        heartbeat_interval_sec=1, peer_timeout_sec=2, grpc_max_message_bytes=64 * 1024,
    )
    real = protocol.records_for_message

    def faulty(message: pb.PeerMessage, *args: Any) -> Any:
        if message.request_id == "inject-bug":  # a bug in the pure mapping, for this one message
            raise RuntimeError("secret internals")
        return real(message, *args)

    monkeypatch.setattr(protocol, "records_for_message", faulty)
    statuses: dict[str, tuple[grpc.StatusCode, str]] = {}
    endings: dict[str, Callable[[GrpcioPeer], None]] = {
        "p-closed": GrpcioPeer.half_close,
        "p-cancelled": GrpcioPeer.cancel,
        "p-timeout": lambda peer: None,
        "p-garbage": lambda peer: peer.send(b"\xff\xfe\xfd random bytes"),
        "p-second-registration": lambda peer: peer.send(
            pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="again"))
        ),
        "p-oversized": lambda peer: peer.send(OVERSIZED),
        "p-error": lambda peer: peer.send(delete_response("inject-bug")),
    }
    stayers: dict[str, tuple[GrpcioPeer, trio.Event]] = {}
    async with running_edge(settings) as edge:
        with grpcio_peers(edge, tls_files.ca_pem) as new_peer:
            # Everything but shutdown, while two peers stay for it, heartbeating.
            async with trio.open_nursery() as heartbeats:
                for name in ("p-shutdown", "p-replaced"):
                    peer = new_peer()
                    await register(peer, name)
                    stayers[name] = (peer, trio.Event())
                    heartbeats.start_soon(peer.heartbeat_until, stayers[name][1], 0.5)

                async def ending(name: str) -> None:
                    peer = new_peer()
                    await register(peer, name)
                    endings[name](peer)
                    statuses[name] = await peer.wait_status()

                async with trio.open_nursery() as nursery:
                    for name in endings:
                        nursery.start_soon(ending, name)
                old, old_quiet = stayers.pop("p-replaced")
                old_quiet.set()  # quiet before it is replaced: a write racing the end of the call is not the test
                newer = new_peer()
                await register(newer, "p-replaced")
                statuses["p-replaced/old"] = await old.wait_status()
                stayers["p-replaced/new"] = (newer, trio.Event())
                heartbeats.start_soon(newer.heartbeat_until, stayers["p-replaced/new"][1], 0.5)
                assert await edge.registered() == 2
                for _, quiet in stayers.values():  # before the shutdown, well within PEER_TIMEOUT_SEC of it
                    quiet.set()
            await edge.stop()
            # The edge is stopped: the stayers get their shutdown status.
            for name, (peer, _) in stayers.items():
                statuses[name] = await peer.wait_status()

    cancelled = statuses.pop("p-cancelled")
    assert cancelled[0] == grpc.StatusCode.CANCELLED  # the client's own doing
    expected = {
        "p-closed": (grpc.StatusCode.OK, ""),
        "p-timeout": (grpc.StatusCode.DEADLINE_EXCEEDED, "no message from the peer in 2 s"),
        "p-garbage": (grpc.StatusCode.INVALID_ARGUMENT, "message is not a valid PeerMessage"),
        "p-second-registration": (grpc.StatusCode.INVALID_ARGUMENT, "registration_request on an already registered stream"),
        "p-oversized": (grpc.StatusCode.RESOURCE_EXHAUSTED, OVERSIZED_DETAIL),
        "p-error": (grpc.StatusCode.INTERNAL, "internal error"),
        "p-replaced/old": (grpc.StatusCode.ABORTED, "replaced by a newer stream for the same peer id"),
        "p-replaced/new": (grpc.StatusCode.UNAVAILABLE, "edge shutting down"),
        "p-shutdown": (grpc.StatusCode.UNAVAILABLE, "edge shutting down"),
    }
    assert set(statuses) == set(expected)
    for name, status in expected.items():
        assert statuses[name] == status, name

    records = await consume_unique(kafka_bootstrap, settings.kafka_peer_lifecycle_events_topic, 20)
    assert lifecycle_by_peer(records) == {
        "p-shutdown": [("connected", None), ("disconnected", "shutdown")],
        "p-replaced": [("connected", None), ("disconnected", "replaced"), ("connected", None), ("disconnected", "shutdown")],
        "p-closed": [("connected", None), ("disconnected", "stream_closed")],
        "p-cancelled": [("connected", None), ("disconnected", "stream_closed")],
        "p-timeout": [("connected", None), ("disconnected", "timeout")],
        "p-garbage": [("connected", None), ("disconnected", "protocol_error")],
        "p-second-registration": [("connected", None), ("disconnected", "protocol_error")],
        "p-oversized": [("connected", None), ("disconnected", "protocol_error")],
        "p-error": [("connected", None), ("disconnected", "error")],
    }
    replaced = [r.value for r in unique(records) if r.key == "p-replaced"]
    assert replaced[0]["session_id"] == replaced[1]["session_id"] != replaced[2]["session_id"] == replaced[3]["session_id"]
    assert replaced[0]["epoch"] < replaced[2]["epoch"]
    timed_out = [r.value for r in unique(records) if r.key == "p-timeout"]
    silence = parse_timestamp(timed_out[1]["timestamp"]) - parse_timestamp(timed_out[0]["timestamp"])
    assert datetime.timedelta(seconds=2) <= silence < datetime.timedelta(seconds=3)


# --------------------------------------------------------------------------------------- bad input


async def test_bad_input_gets_clear_statuses_while_20_peers_lose_nothing(
    kafka_bootstrap: str, kafka_supports_idempotence: bool, kafka_topic_prefix: str, tls_files: Any
) -> None:
    """20 well-behaved peers stream 50 responses each while, on the same edge, streams send random
    bytes, an oversized message, nothing at all, an empty or over-long peer id, a wrong first message,
    a second registration on a registered stream, or register past MAX_PEERS. Each bad stream gets
    its status (and a refusal where one can be sent); the 20 see no error, and all 1,000 of their
    records are in Kafka, in order per peer."""
    settings = edge_settings(
        kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence,
        peer_handshake_timeout_sec=1.0, grpc_max_message_bytes=64 * 1024, max_peers=21,
    )
    bad_first = {
        "random_bytes": b"\x00\xff\xfe\xfd not a protobuf",
        "oversized": OVERSIZED,
        "empty_id": pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="")).SerializeToString(),
        "long_id": pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="p" * 129)).SerializeToString(),
        "not_registration": pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1)).SerializeToString(),
        "over_limit": pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="one-too-many")).SerializeToString(),
    }
    good: dict[str, Any] = {}
    bad: dict[str, Any] = {}
    async with running_edge(settings) as edge:
        with grpcio_peers(edge, tls_files.ca_pem) as new_peer:
            peers = [new_peer() for _ in range(20)]
            async with trio.open_nursery() as nursery:
                for n, peer in enumerate(peers):
                    nursery.start_soon(register, peer, f"good-{n:02d}")

            async def behave(n: int, peer: GrpcioPeer) -> None:
                for i in range(50):
                    peer.send(delete_response(f"good-{n:02d}-{i:03d}"))
                    if i % 10 == 0:
                        peer.send(pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=i)))
                peer.half_close()
                status = await peer.wait_status(timeout=60)
                good[f"good-{n:02d}"] = status, [m.WhichOneof("payload") for m in peer.received]

            async def misbehave(name: str) -> None:
                peer = new_peer()
                if name != "never_registers":
                    peer.send(bad_first[name])
                status = await peer.wait_status(timeout=30)
                bad[name] = status, [(m.registration_response.success, m.registration_response.error_message) for m in peer.received]

            async def register_twice() -> None:
                peer = new_peer()
                await register(peer, "twice")
                peer.send(pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="twice")))
                bad["second_registration"] = await peer.wait_status(timeout=30), []

            # Past MAX_PEERS (21) while the 20 and one more are connected ...
            filler = new_peer()
            await register(filler, "filler")
            await misbehave("over_limit")
            filler.half_close()
            await filler.wait_status(timeout=30)
            # ... then everything else at once.
            async with trio.open_nursery() as nursery:
                for n, peer in enumerate(peers):
                    nursery.start_soon(behave, n, peer)
                for name in [name for name in bad_first if name != "over_limit"] + ["never_registers"]:
                    nursery.start_soon(misbehave, name)
                nursery.start_soon(register_twice)

    for name, (status, kinds) in good.items():
        assert status == (grpc.StatusCode.OK, ""), name
        assert kinds[0] == "registration_response" and set(kinds[1:]) <= {"heartbeat"}, name
    id_message = "peer_name must be 1 to 128 ASCII letters, digits or . _ - : @"
    expected = {
        "random_bytes": (grpc.StatusCode.INVALID_ARGUMENT, "message is not a valid PeerMessage"),
        "oversized": (grpc.StatusCode.RESOURCE_EXHAUSTED, OVERSIZED_DETAIL),
        "empty_id": (grpc.StatusCode.INVALID_ARGUMENT, id_message),
        "long_id": (grpc.StatusCode.INVALID_ARGUMENT, id_message),
        "not_registration": (grpc.StatusCode.INVALID_ARGUMENT, "first message must be a registration_request, got heartbeat"),
        "over_limit": (grpc.StatusCode.RESOURCE_EXHAUSTED, "edge is at its peer limit (21)"),
        "never_registers": (grpc.StatusCode.DEADLINE_EXCEEDED, "no registration within 1 s"),
    }
    assert set(bad) == {*expected, "second_registration"}
    for name, (code, details) in expected.items():
        status, refusals = bad[name]
        assert status == (code, details), name
        assert refusals == [(False, details)], name  # a refusal response, then the status
    assert bad["second_registration"][0] == (
        grpc.StatusCode.INVALID_ARGUMENT, "registration_request on an already registered stream"
    )

    records = await consume_unique(kafka_bootstrap, settings.kafka_file_delete_responses_topic, 1000, timeout=60)
    assert len(records) == 1000
    per_peer: dict[str, list[str]] = collections.defaultdict(list)
    for record in records:
        per_peer[record.key].append(record.value["request_id"])
    assert per_peer == {f"good-{n:02d}": [f"good-{n:02d}-{i:03d}" for i in range(50)] for n in range(20)}
    lifecycle = await consume_unique(kafka_bootstrap, settings.kafka_peer_lifecycle_events_topic, 44)
    assert lifecycle_by_peer(lifecycle) == {
        **{f"good-{n:02d}": [("connected", None), ("disconnected", "stream_closed")] for n in range(20)},
        "filler": [("connected", None), ("disconnected", "stream_closed")],
        "twice": [("connected", None), ("disconnected", "protocol_error")],
    }


# ------------------------------------------------------------------------------ dropped peers


_PEER_PROCESS = r"""
import asyncio, json, sys, time, grpc
from edge.proto import CONNECT_PATH, pb

async def main(port, ca_path, prefix, count, channels):
    with open(ca_path, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.secure_channel(f"localhost:{port}", credentials, options=options) for _ in range(channels)]
    calls = {}
    for n in range(count):
        call = chans[n % channels].stream_stream(
            CONNECT_PATH, request_serializer=pb.PeerMessage.SerializeToString,
            response_deserializer=pb.EdgeMessage.FromString)()
        name = f"{prefix}-{n:03d}"
        await call.write(pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name=name)))
        calls[name] = call
    for call in calls.values():
        assert (await call.read()).registration_response.success
    print("registered", flush=True)
    pending = list(calls.items())
    while pending:  # "cancel N" lines (or get killed)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        wave, pending = pending[: int(line.split()[1])], pending[int(line.split()[1]) :]
        dropped_at = {}
        for name, call in wave:
            dropped_at[name] = time.time()
            call.cancel()
        print(json.dumps(dropped_at), flush=True)
    await asyncio.gather(*(chan.close() for chan in chans))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


class PeerProcess:
    """Peers in a process of their own (as real peers are): `count` registered calls over `channels`
    TLS connections; then `cancel(n)` the next n calls at once, or kill the process."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    @classmethod
    async def start(cls, port: int, ca_path: Path, prefix: str, count: int, channels: int) -> PeerProcess:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _PEER_PROCESS, str(port), str(ca_path), prefix, str(count), str(channels)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        peers = cls(process)
        assert await peers._line() == b"registered"
        return peers

    async def _line(self) -> bytes:
        assert self.process.stdout is not None
        with trio.fail_after(60):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(65536)
                assert chunk, "peer process exited early"
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    async def cancel(self, count: int) -> dict[str, float]:
        """Cancel the next `count` calls at once; the wall-clock time each was cancelled at."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"cancel %d\n" % count)
        return json.loads(await self._line())

    async def close(self) -> None:
        self.process.kill()
        with trio.move_on_after(10):
            await self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                await pipe.aclose()


async def test_200_dropped_peers_are_noticed_at_once_and_leave_nothing(
    kafka_bootstrap: str, kafka_supports_idempotence: bool, kafka_topic_prefix: str, tls_files: Any, tmp_path: Path
) -> None:
    """180 grpcio peers (in another process, over 9 connections) cancel their calls, 20 at a time, and
    a process holding 20 more is killed (SIGKILL): each of the 200 sessions publishes
    `disconnected(stream_closed)` stamped within a second of its drop (the heartbeat timeout is
    120 s), with one log line naming the peer, and afterwards the edge holds no session, stream,
    connection, task or socket for them."""
    settings = edge_settings(
        kafka_topic_prefix,
        kafka_bootstrap,
        tls_files,
        kafka_supports_idempotence,
        # 200 registrations from one address in a burst: not what the per-address throttle is about.
        peer_registration_rate_per_address=0,
    )
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(tls_files.ca_pem)
    log_path = tmp_path / "edge.log"
    with production_logging(log_path):
        dropped_at, tasks = await _drop_200(settings, ca_path)
    tasks_before, tasks_with_200, tasks_after = tasks
    assert tasks_after == tasks_before
    assert tasks_with_200 >= tasks_before + 200 * 2  # it counts each stream: handler (the reader), writer

    records = await consume_unique(kafka_bootstrap, settings.kafka_peer_lifecycle_events_topic, 400, timeout=60)
    gone = {r.key: r.value for r in records if r.value["event_type"] == "disconnected"}
    assert set(gone) == set(dropped_at) and len(records) == 400
    assert {value["reason"] for value in gone.values()} == {"stream_closed"}
    delays = {name: parse_timestamp(gone[name]["timestamp"]).timestamp() - at for name, at in dropped_at.items()}
    for kind in ("cancelled", "killed"):
        of_kind = sorted(delay for name, delay in delays.items() if name.startswith(kind))
        print(
            f"\ndisconnected(stream_closed) stamped after {kind}: median {statistics.median(of_kind) * 1000:.0f} ms,"
            f" max {of_kind[-1] * 1000:.0f} ms over {len(of_kind)} peers"
        )
    assert max(delays.values()) < 1.0
    # One structured line per ending, naming the peer and its session.
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    ended = {line["peer_id"]: line for line in lines if line["event"] == "peer_disconnected"}
    assert set(ended) == set(dropped_at)
    assert all(line["reason"] == "stream_closed" and line["session_id"] for line in ended.values())


async def _drop_200(settings: Any, ca_path: Path) -> tuple[dict[str, float], tuple[int, int, int]]:
    """Run the drops; return when each peer was dropped, and peer-side task counts before, with
    200 peers, and after."""
    async with running_edge(settings) as edge:
        tasks_before = _peer_side_tasks()
        cancelling = await PeerProcess.start(edge.port, ca_path, "cancelled", 180, 9)
        killed = await PeerProcess.start(edge.port, ca_path, "killed", 20, 1)
        try:
            with trio.fail_after(10):
                await edge.stats.wait_until(lambda s: s.streams_open == 200)
            tasks_with_200 = _peer_side_tasks()
            dropped_at: dict[str, float] = {}
            for wave in range(1, 10):
                dropped_at.update(await cancelling.cancel(20))
                with trio.fail_after(10):
                    await edge.stats.wait_until(lambda s, wave=wave: s.streams_open == 200 - 20 * wave)
            killed_at = time.time()
            killed.process.kill()
            dropped_at.update((f"killed-{n:03d}", killed_at) for n in range(20))
            with trio.fail_after(10):
                await edge.stats.wait_until(lambda s: s.streams_open == 0 and s.connections_open == 0)
        finally:
            await cancelling.close()
            await killed.close()
        assert await edge.registered() == 0
        assert edge.stats.streams_started == 200 and edge.stats.streams_reset + edge.stats.streams_lost == 200
        with trio.fail_after(10):
            while own_tcp_sockets(edge.port)["server"]:
                await trio.sleep(0.01)
        assert len(own_tcp_sockets(edge.port)["listen"]) == 1
        return dropped_at, (tasks_before, tasks_with_200, _peer_side_tasks())


def _peer_side_tasks() -> int:
    """Tasks of this Trio run that belong to the peer server: the transport's and the sessions'."""
    count = 0
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task.name.startswith(("edge.grpc.", "edge.peers.", "grpc stream")):
            count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count
