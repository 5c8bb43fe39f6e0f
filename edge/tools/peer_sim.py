"""`python -m edge peer-sim`: N simulated peers for demos, smoke tests and load.

Each simulated peer opens a `Connect` stream, registers (with an optional catalog), heartbeats at the
interval the edge gives in its registration response (the first beat at a random point of the first
interval, so thousands of peers do not beat in step), and answers every command as a peer would
(`answers_for`, a pure function): one file_delete_response per deleted id, a file_hash_response with
a digest per requested type, a file_remap_response, up to MAX_SCREENSHOTS screenshot responses
carrying a small PNG, and batch_file_offer_responses accepted silently. A peer whose stream ends
reconnects with capped, jittered backoff (unless `--no-reconnect`), as a real peer does.

Load shape: by default each peer has a TCP (+TLS) connection of its own, as real peers do;
`--streams-per-connection` packs several peers' streams onto one HTTP/2 connection (cheaper for big
runs), `--connect-rate` spreads connection set-up, and `--processes` splits the peers over child
processes (each a `peer-sim --child`), whose JSON reports the parent merges.

It prints a progress line every `--progress-interval` seconds (stderr) and, at the end, one JSON
summary line on stdout (`"event": "peer_sim_summary"`). Exit code 0 when every peer registered at
least once, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import math
import os
import random
import signal
import ssl
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

import attrs
import trio
from google.protobuf.message import DecodeError

from edge.peers.tokens import mint_token
from edge.proto import CONNECT_PATH, pb
from edge.tools.grpc_client import GrpcClientConnection, StreamEnded, client_ssl_context, connect

#: Screenshot responses sent for one request at most (a request's `quantity` is capped to this).
MAX_SCREENSHOTS: Final = 10
#: Histogram buckets (ms) for registration latency: merged across processes, read as percentiles.
LATENCY_BUCKETS_MS: Final = tuple(round(0.1 * 1.25**i, 3) for i in range(60))  # 0.1 ms .. ~65 s
RECONNECT_INITIAL: Final = 0.5
RECONNECT_MAX: Final = 30.0
CONNECT_TIMEOUT: Final = 15.0
REGISTRATION_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
#: Lifetime of the tokens peer-sim signs (one per session).
TOKEN_TTL_SEC: Final = 3600.0


@attrs.frozen
class SimConfig:
    host: str = "localhost"
    port: int = 50051
    tls: bool = True
    ca_path: str | None = None
    insecure: bool = False
    server_name: str | None = None
    peers: int = 10
    id_prefix: str = "sim"
    id_offset: int = 0
    id_width: int = 0
    catalog_size: int = 3
    offer_files: int = 0
    streams_per_connection: int = 1
    connect_rate: float = 200.0
    duration: float | None = None
    reconnect: bool = True
    progress_interval: float = 2.0
    #: Signs a token per peer (PEER_AUTH_MODE token): an HS256 secret (bytes) or an Ed25519 private key.
    token_key: Any = None
    token_audience: str | None = None
    #: The files the key came from, handed on to child processes.
    token_secret_path: str | None = None
    token_ed25519_path: str | None = None

    def peer_ids(self) -> list[str]:
        width = self.id_width or len(str(self.id_offset + self.peers))
        return [f"{self.id_prefix}-{i:0{width}d}" for i in range(self.id_offset + 1, self.id_offset + self.peers + 1)]


@attrs.define
class SimStats:
    """Counters of one simulation; `snapshot()` is JSON-ready and `merge()` adds snapshots up."""

    peers: int = 0
    registered_now: int = 0
    max_registered: int = 0
    registrations: int = 0
    peers_ever_registered: set[str] = attrs.field(factory=set)
    registration_failures: int = 0
    connect_failures: int = 0
    heartbeats_sent: int = 0
    heartbeats_received: int = 0
    commands_received: collections.Counter[str] = attrs.field(factory=collections.Counter)
    responses_sent: int = 0
    offers_sent: int = 0
    offers_accepted: int = 0
    stream_endings: collections.Counter[str] = attrs.field(factory=collections.Counter)
    latency_buckets: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_max_ms: float = 0.0
    started_at: float = 0.0
    all_registered_after: float | None = None

    def registered(self, peer_id: str, latency_ms: float, now: float) -> None:
        self.registrations += 1
        self.peers_ever_registered.add(peer_id)
        self.registered_now += 1
        self.max_registered = max(self.max_registered, self.registered_now)
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS_MS) if latency_ms <= bound), len(LATENCY_BUCKETS_MS))
        self.latency_buckets[index] += 1
        self.latency_max_ms = max(self.latency_max_ms, latency_ms)
        if self.all_registered_after is None and len(self.peers_ever_registered) == self.peers:
            self.all_registered_after = now - self.started_at

    def snapshot(self) -> dict[str, Any]:
        return {
            "peers": self.peers,
            "registered_now": self.registered_now,
            "max_registered": self.max_registered,
            "peers_ever_registered": len(self.peers_ever_registered),
            "registrations": self.registrations,
            "registration_failures": self.registration_failures,
            "connect_failures": self.connect_failures,
            "heartbeats_sent": self.heartbeats_sent,
            "heartbeats_received": self.heartbeats_received,
            "commands_received": dict(self.commands_received),
            "responses_sent": self.responses_sent,
            "offers_sent": self.offers_sent,
            "offers_accepted": self.offers_accepted,
            "stream_endings": dict(self.stream_endings),
            "latency_buckets": list(self.latency_buckets),
            "latency_max_ms": round(self.latency_max_ms, 3),
            "all_registered_after_sec": None if self.all_registered_after is None else round(self.all_registered_after, 3),
        }


def merge_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add up the snapshots of several processes: counts are summed (`max_registered` too: the sum of
    each process's peak), the latency maximum and the time to all-registered are the slowest one's."""
    merged: dict[str, Any] = {}
    for snap in snapshots:
        for key, value in snap.items():
            if key == "latency_max_ms":
                merged[key] = max(merged.get(key, 0), value)
            elif key == "all_registered_after_sec":
                if key not in merged:
                    merged[key] = value
                elif value is None or merged[key] is None:
                    merged[key] = None
                else:
                    merged[key] = max(merged[key], value)
            elif isinstance(value, dict):
                target = merged.setdefault(key, {})
                for k, v in value.items():
                    target[k] = target.get(k, 0) + v
            elif isinstance(value, list):
                target = merged.setdefault(key, [0] * len(value))
                merged[key] = [a + b for a, b in zip(target, value, strict=False)]
            else:
                merged[key] = merged.get(key, 0) + value
    if len(snapshots) != 1 and any(s.get("all_registered_after_sec") is None for s in snapshots):
        merged["all_registered_after_sec"] = None
    return merged


def latency_percentiles(buckets: Sequence[int], max_ms: float) -> dict[str, float | None]:
    """p50/p90/p99 (bucket upper bounds, in ms) and the exact maximum."""
    total = sum(buckets)
    result: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        if total == 0:
            result[name] = None
            continue
        rank = math.ceil(q * total)
        seen = 0
        for index, count in enumerate(buckets):
            seen += count
            if seen >= rank:
                bound = LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else max_ms
                result[name] = min(bound, max_ms)
                break
    result["max"] = max_ms if total else None
    return result


def summary(snapshot: dict[str, Any], config: SimConfig, elapsed: float, processes: int) -> dict[str, Any]:
    out = {key: value for key, value in snapshot.items() if key not in ("latency_buckets", "latency_max_ms")}
    out = {
        "event": "peer_sim_summary",
        "target": f"{config.host}:{config.port}",
        "tls": config.tls,
        "processes": processes,
        "elapsed_sec": round(elapsed, 3),
        **out,
        "registration_latency_ms": latency_percentiles(snapshot["latency_buckets"], snapshot["latency_max_ms"]),
    }
    return out


def progress_line(snapshot: dict[str, Any], elapsed: float) -> str:
    commands = sum(snapshot["commands_received"].values())
    endings = ", ".join(f"{k} {v}" for k, v in sorted(snapshot["stream_endings"].items())) or "none"
    return (
        f"peer-sim {elapsed:7.1f}s  registered {snapshot['registered_now']}/{snapshot['peers']}"
        f"  commands {commands} answered {snapshot['responses_sent']}"
        f"  heartbeats out {snapshot['heartbeats_sent']} in {snapshot['heartbeats_received']}"
        f"  ended: {endings}  connect failures {snapshot['connect_failures']}"
    )


# --- what a peer answers: pure ------------------------------------------------------------------


def catalog_for(peer_id: str, size: int) -> list[str]:
    """A stable catalog per peer id (the same after a reconnect)."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"giggityflix-sim:{peer_id}:{i}")) for i in range(size)]


def tiny_png(seed: int) -> bytes:
    """A valid 1x1 PNG whose colour depends on `seed`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixel = bytes([0, seed % 256, (seed * 7) % 256, (seed * 13) % 256])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixel))
        + chunk(b"IEND", b"")
    )


def _digest(hash_type: str, catalog_uuid: str) -> str:
    name = hash_type.lower().replace("-", "")
    algorithm = name if name in hashlib.algorithms_guaranteed and not name.startswith("shake") else "sha256"
    return hashlib.new(algorithm, f"giggityflix-sim:{catalog_uuid}".encode()).hexdigest()


def answers_for(message: pb.EdgeMessage) -> list[pb.PeerMessage]:
    """What a peer sends back for one EdgeMessage (empty for heartbeats, offers' answers, unknown kinds)."""
    kind = message.WhichOneof("payload")
    rid = message.request_id
    if kind == "file_delete_request":
        return [
            pb.PeerMessage(request_id=rid, file_delete_response=pb.FileDeleteResponse(catalog_uuid=u, success=True))
            for u in message.file_delete_request.catalog_uuids
        ]
    if kind == "file_hash_request":
        request = message.file_hash_request
        hashes = {t: _digest(t, request.catalog_uuid) for t in request.hash_types} or {
            "sha256": _digest("sha256", request.catalog_uuid)
        }
        return [
            pb.PeerMessage(
                request_id=rid, file_hash_response=pb.FileHashResponse(catalog_uuid=request.catalog_uuid, hashes=hashes)
            )
        ]
    if kind == "file_remap_request":
        remap = message.file_remap_request
        return [
            pb.PeerMessage(
                request_id=rid,
                file_remap_response=pb.FileRemapResponse(new_catalog_uuid=remap.new_catalog_uuid, success=True),
            )
        ]
    if kind == "screenshot_capture_request":
        capture = message.screenshot_capture_request
        count = min(max(capture.quantity, 1), MAX_SCREENSHOTS)
        return [
            pb.PeerMessage(
                request_id=rid,
                screenshot_capture_response=pb.ScreenshotCaptureResponse(
                    catalog_uuid=capture.catalog_uuid,
                    screenshot=pb.ScreenshotData(frame_number_in_video=(i + 1) * 240, screenshot=tiny_png(i)),
                ),
            )
            for i in range(count)
        ]
    return []


def registration(peer_id: str, catalog: list[str]) -> pb.PeerMessage:
    return pb.PeerMessage(
        request_id=f"reg-{peer_id}-{uuid.uuid4().hex[:8]}",
        registration_request=pb.PeerRegistrationRequest(peer_name=peer_id, catalog_uuids=catalog),
    )


def file_offer(peer_id: str, count: int) -> pb.PeerMessage:
    files = [
        pb.FileOfferItem(peer_luid=f"{peer_id}-luid-{i}", relative_path=f"movies/sim-{i}.mkv", size_bytes=700_000_000 + i)
        for i in range(count)
    ]
    return pb.PeerMessage(
        request_id=f"offer-{peer_id}-{uuid.uuid4().hex[:8]}",
        batch_file_offer_request=pb.BatchFileOfferRequest(files=files, category_type="movie"),
    )


# --- the simulation -----------------------------------------------------------------------------


@attrs.define(eq=False)
class _RateLimiter:
    rate: float
    _next: float = 0.0

    async def wait(self) -> None:
        if self.rate <= 0:
            return
        now = trio.current_time()
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        await trio.sleep_until(slot)


@attrs.define(eq=False)
class PeerSimulation:
    """Runs the simulated peers until `stop()` (or the duration) and keeps `stats`."""

    config: SimConfig
    stats: SimStats = attrs.field(factory=SimStats)
    now_ms: Callable[[], int] = attrs.field(default=lambda: 0)
    #: Wall clock for the tokens' iat/exp (tokens are checked against the edge's wall clock).
    wall: Callable[[], datetime.datetime] = attrs.field(default=lambda: datetime.datetime.now(datetime.timezone.utc))
    _stopping: trio.Event = attrs.field(factory=trio.Event, init=False)
    _ssl: ssl.SSLContext | None = attrs.field(default=None, init=False)
    _limiter: _RateLimiter = attrs.field(factory=lambda: _RateLimiter(0.0), init=False)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        if config.tls:
            self._ssl = client_ssl_context(config.ca_path, verify=not config.insecure)
        self._limiter = _RateLimiter(config.connect_rate)
        ids = config.peer_ids()
        self.stats.peers = len(ids)
        self.stats.started_at = trio.current_time()
        size = max(1, config.streams_per_connection)
        async with trio.open_nursery() as nursery:
            if config.duration is not None:
                nursery.start_soon(self._stop_after, config.duration)
            task_status.started()
            async with trio.open_nursery() as groups:
                for start in range(0, len(ids), size):
                    groups.start_soon(self._group, ids[start : start + size])
            nursery.cancel_scope.cancel()

    async def _stop_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.stop()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._stopping.wait()

    async def _group(self, peer_ids: list[str]) -> None:
        delay = RECONNECT_INITIAL
        while not self.stopping:
            await self._limiter.wait()
            if self.stopping:
                return
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    connection = await connect(
                        self.config.host, self.config.port, ssl_context=self._ssl, server_name=self.config.server_name
                    )
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError):
                self.stats.connect_failures += 1
                if not self.config.reconnect:
                    return
                await self._sleep_unless_stopping(delay * (1 + random.random() * 0.5))
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_INITIAL
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.serve)
                async with trio.open_nursery() as peers:
                    for peer_id in peer_ids:
                        peers.start_soon(self._peer, connection, peer_id)
                with trio.move_on_after(2, shield=True):
                    await connection.aclose()
                nursery.cancel_scope.cancel()
            if not self.config.reconnect:
                return
            await self._sleep_unless_stopping(delay * (1 + random.random() * 0.5))

    async def _peer(self, connection: GrpcClientConnection, peer_id: str) -> None:
        """Sessions of one peer on one connection, until the connection or the simulation ends."""
        delay = RECONNECT_INITIAL
        catalog = catalog_for(peer_id, self.config.catalog_size)
        while connection.is_open and not self.stopping:
            registered = await self._session(connection, peer_id, catalog)
            if not self.config.reconnect or not connection.is_open:
                return
            delay = RECONNECT_INITIAL if registered else min(delay * 2, RECONNECT_MAX)
            await self._sleep_unless_stopping(delay * (1 + random.random() * 0.5))

    async def _session(self, connection: GrpcClientConnection, peer_id: str, catalog: list[str]) -> bool:
        stats = self.stats
        metadata: tuple[tuple[str, str], ...] = ()
        if self.config.token_key is not None:
            token = mint_token(peer_id, self.config.token_key, now=self.wall(), ttl_sec=TOKEN_TTL_SEC, audience=self.config.token_audience)
            metadata = (("authorization", f"Bearer {token}"),)
        try:
            stream = await connection.open_stream(CONNECT_PATH, metadata)
        except StreamEnded:
            return False
        started = trio.current_time()
        registered = False
        try:
            try:
                await stream.send_message(registration(peer_id, catalog).SerializeToString())
                with trio.move_on_after(REGISTRATION_TIMEOUT):
                    data = await stream.receive_message()
                reply = pb.EdgeMessage.FromString(data) if data else None
            except (StreamEnded, DecodeError):
                reply = None
            if reply is None or reply.WhichOneof("payload") != "registration_response" or not reply.registration_response.success:
                stats.registration_failures += 1
                return False
            registered = True
            stats.registered(peer_id, (trio.current_time() - started) * 1000, trio.current_time())
            interval = max(1, reply.registration_response.heartbeat_interval_sec or 30)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeats, stream, interval)
                    nursery.start_soon(self._close_when_stopping, stream)
                    if self.config.offer_files:
                        await stream.send_message(file_offer(peer_id, self.config.offer_files).SerializeToString())
                        stats.offers_sent += 1
                    await self._answer(stream)
                    nursery.cancel_scope.cancel()
            except* StreamEnded:
                pass  # the edge ended the stream while we were writing: its status says why
        finally:
            if registered:
                stats.registered_now -= 1
            status = stream.status_name or "CANCELLED"
            if stream.status is None:
                with trio.move_on_after(1, shield=True):
                    await stream.cancel()
            stats.stream_endings[status] += 1
        return registered

    async def _answer(self, stream: Any) -> None:
        stats = self.stats
        while (data := await stream.receive_message()) is not None:
            try:
                message = pb.EdgeMessage.FromString(data)
            except DecodeError:
                stats.commands_received["undecodable"] += 1
                continue
            kind = message.WhichOneof("payload") or "unknown"
            if kind == "heartbeat":
                stats.heartbeats_received += 1
                continue
            if kind == "batch_file_offer_response":
                stats.offers_accepted += 1
            stats.commands_received[kind] += 1
            for answer in answers_for(message):
                await stream.send_message(answer.SerializeToString())
                stats.responses_sent += 1

    async def _heartbeats(self, stream: Any, interval: int) -> None:
        await trio.sleep(random.random() * interval)
        while not stream.local_closed:
            beat = pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=self.now_ms()))
            try:
                await stream.send_message(beat.SerializeToString())
            except StreamEnded:
                if stream.local_closed:
                    return  # we are stopping: the edge's status is on its way
                raise
            self.stats.heartbeats_sent += 1
            await trio.sleep(interval)

    async def _close_when_stopping(self, stream: Any) -> None:
        await self._stopping.wait()
        await stream.close_send()  # the edge ends the session (stream_closed) and sends its status


# --- command-line driver -----------------------------------------------------------------------


def _wall_ms() -> int:
    import time

    return int(time.time() * 1000)


async def run_cli(config: SimConfig, *, processes: int, child: bool, out: TextIO, err: TextIO) -> int:
    """`python -m edge peer-sim`: run, show progress, print the summary. Returns the exit code."""
    if processes > 1:
        return await _run_parent(config, processes, out, err)
    simulation = PeerSimulation(config, now_ms=_wall_ms)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, simulation)
        nursery.start_soon(_report, simulation, started, child, out, err)
        with trio.CancelScope() as run_scope:
            nursery.start_soon(_hard_stop_after_stop, simulation, run_scope)
            await simulation.run()
        nursery.cancel_scope.cancel()
    snapshot = simulation.stats.snapshot()
    elapsed = trio.current_time() - started
    if child:
        print(json.dumps({"final": True, **snapshot}), file=out, flush=True)
    else:
        print(progress_line(snapshot, elapsed), file=err, flush=True)
        print(json.dumps(summary(snapshot, config, elapsed, 1)), file=out, flush=True)
    return 0 if snapshot["peers_ever_registered"] == snapshot["peers"] else 1


async def _hard_stop_after_stop(simulation: PeerSimulation, scope: trio.CancelScope) -> None:
    await simulation._stopping.wait()
    await trio.sleep(STOP_TIMEOUT)
    scope.cancel()


async def _stop_on_signal(simulation: PeerSimulation) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if simulation.stopping:
                os._exit(1)
            simulation.stop()


async def _report(simulation: PeerSimulation, started: float, child: bool, out: TextIO, err: TextIO) -> None:
    interval = simulation.config.progress_interval
    if interval <= 0:
        return
    while True:
        await trio.sleep(interval)
        snapshot = simulation.stats.snapshot()
        if child:
            print(json.dumps(snapshot), file=out, flush=True)
        else:
            print(progress_line(snapshot, trio.current_time() - started), file=err, flush=True)


def _child_argv(config: SimConfig, peers: int, offset: int, width: int) -> list[str]:
    argv = [
        sys.executable, "-m", "edge", "peer-sim", "--child",
        "--target", f"{config.host}:{config.port}",
        "--peers", str(peers), "--id-prefix", config.id_prefix, "--id-offset", str(offset), "--id-width", str(width),
        "--catalog-size", str(config.catalog_size), "--offer-files", str(config.offer_files),
        "--streams-per-connection", str(config.streams_per_connection),
        "--connect-rate", str(config.connect_rate), "--progress-interval", str(config.progress_interval or 1.0),
    ]
    argv.append("--tls" if config.tls else "--no-tls")
    if config.ca_path:
        argv += ["--ca", config.ca_path]
    if config.insecure:
        argv.append("--insecure")
    if config.server_name:
        argv += ["--server-name", config.server_name]
    if config.duration is not None:
        argv += ["--duration", str(config.duration)]
    if not config.reconnect:
        argv.append("--no-reconnect")
    if config.token_ed25519_path:
        argv += ["--ed25519-key", config.token_ed25519_path]
    elif config.token_secret_path:
        argv += ["--token-secret", config.token_secret_path]
    else:
        argv.append("--no-token")
    if config.token_audience:
        argv += ["--audience", config.token_audience]
    return argv


async def _run_parent(config: SimConfig, processes: int, out: TextIO, err: TextIO) -> int:
    width = len(str(config.id_offset + config.peers))
    shares = [config.peers // processes + (1 if i < config.peers % processes else 0) for i in range(processes)]
    latest: list[dict[str, Any] | None] = [None] * processes
    finals: list[bool] = [False] * processes
    started = trio.current_time()
    children: list[trio.Process] = []

    async def read(index: int, process: trio.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                finals[index] = finals[index] or bool(report.pop("final", False))
                latest[index] = report

    async with trio.open_nursery() as nursery:
        offset = config.id_offset
        for index, share in enumerate(shares):
            # A session of its own: a terminal's Ctrl-C reaches the parent only, which forwards it
            # once (a child hit twice would exit at once, without its report).
            process = await trio.lowlevel.open_process(
                _child_argv(config, share, offset, width),
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            children.append(process)
            nursery.start_soon(read, index, process)
            offset += share

        async def forward_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    for child in children:
                        if child.returncode is None:
                            child.send_signal(signum)

        async def progress() -> None:
            while config.progress_interval > 0:
                await trio.sleep(config.progress_interval)
                reports = [r for r in latest if r is not None]
                if reports:
                    print(progress_line(merge_snapshots(reports), trio.current_time() - started), file=err, flush=True)

        helpers = trio.CancelScope()

        async def run_helpers() -> None:
            with helpers:
                async with trio.open_nursery() as inner:
                    inner.start_soon(forward_signals)
                    inner.start_soon(progress)

        nursery.start_soon(run_helpers)
        for child in children:
            await child.wait()
        helpers.cancel()
    reports = [r for r in latest if r is not None]
    if not reports:
        print("peer-sim: no child process reported", file=err)
        return 1
    merged = merge_snapshots(reports)
    elapsed = trio.current_time() - started
    print(progress_line(merged, elapsed), file=err, flush=True)
    print(json.dumps(summary(merged, config, elapsed, processes)), file=out, flush=True)
    complete = all(finals) and merged["peers_ever_registered"] == config.peers
    return 0 if complete else 1
