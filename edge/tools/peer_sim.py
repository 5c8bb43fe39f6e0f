"""`python -m edge peer-sim`: N simulated peers for demos, smoke tests and load.

Each simulated peer opens a `Connect` stream, registers (with an optional catalog), heartbeats at the
interval the edge gives in its registration response (the first beat at a random point of the first
interval, so thousands of peers do not beat in step), and answers every command as a peer would
(`answers_for`, a pure function): one file_delete_response per deleted id, a file_hash_response with
a digest per requested type, a file_remap_response, up to MAX_SCREENSHOTS screenshot responses
carrying a small PNG, and batch_file_offer_responses accepted silently. A peer whose stream ends
reconnects as a real peer should (unless `--no-reconnect`): capped exponential backoff with full
jitter, a longer wait after ABORTED (replaced), see edge/tools/reconnect.py. With several `--edge`
addresses each new connection goes to the next one (round-robin) or a random one.

Load shape: by default each peer has a TCP (+TLS) connection of its own, as real peers do;
`--streams-per-connection` packs several peers' streams onto one HTTP/2 connection (cheaper for big
runs), `--connect-rate` spreads connection set-up, and `--processes` splits the peers over child
processes (each a `peer-sim --child`, edge/tools/peer_sim_cli.py), whose JSON reports the parent merges.

It prints a progress line every `--progress-interval` seconds (stderr) and, at the end, one JSON
summary line on stdout (`"event": "peer_sim_summary"`). Exit code 0 when every peer registered at
least once, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import datetime
import hashlib
import random
import ssl
import struct
import uuid
import zlib
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio
from google.protobuf.message import DecodeError

from edge.peers.tokens import mint_token
from edge.proto import CONNECT_PATH, pb
from edge.tools.grpc_client import GrpcClientConnection, StreamEnded, client_ssl_context, connect
from edge.tools.reconnect import CAP_SEC, INITIAL_SEC, Backoff, EdgeChooser
from edge.tools.sim_report import SimStats

#: Screenshot responses sent for one request at most (a request's `quantity` is capped to this).
MAX_SCREENSHOTS: Final = 10
CONNECT_TIMEOUT: Final = 15.0
REGISTRATION_TIMEOUT: Final = 30.0
#: Lifetime of the tokens peer-sim signs (one per session).
TOKEN_TTL_SEC: Final = 3600.0


@attrs.frozen
class SimConfig:
    host: str = "localhost"
    port: int = 50051
    #: Edge addresses (host, port); when given they replace host:port.
    edges: tuple[tuple[str, int], ...] = ()
    #: "round-robin" (each connection to the next address, groups starting apart) or "random".
    edge_choice: str = "round-robin"
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
    reconnect_initial: float = INITIAL_SEC
    reconnect_max: float = CAP_SEC
    progress_interval: float = 2.0
    #: Signs a token per peer (PEER_AUTH_MODE token): an HS256 secret (bytes) or an Ed25519 private key.
    token_key: Any = None
    token_audience: str | None = None
    #: The files the key came from, handed on to child processes.
    token_secret_path: str | None = None
    token_ed25519_path: str | None = None

    def addresses(self) -> tuple[tuple[str, int], ...]:
        return self.edges or ((self.host, self.port),)

    def peer_ids(self) -> list[str]:
        width = self.id_width or len(str(self.id_offset + self.peers))
        return [f"{self.id_prefix}-{i:0{width}d}" for i in range(self.id_offset + 1, self.id_offset + self.peers + 1)]


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


@attrs.define
class _Outcome:
    """What the peers of one connection achieved: whether any of them registered."""

    registered: bool = False


@attrs.define(eq=False)
class PeerSimulation:
    """Runs the simulated peers until `stop()` (or the duration) and keeps `stats`."""

    config: SimConfig
    stats: SimStats = attrs.field(factory=SimStats)
    now_ms: Callable[[], int] = attrs.field(default=lambda: 0)
    #: Wall clock for the tokens' iat/exp (tokens are checked against the edge's wall clock).
    wall: Callable[[], datetime.datetime] = attrs.field(default=lambda: datetime.datetime.now(datetime.timezone.utc))
    #: Jitter source (backoff, first heartbeat, random edge choice): a float in [0, 1).
    rand: Callable[[], float] = attrs.field(default=random.random)
    _stopping: trio.Event = attrs.field(factory=trio.Event, init=False)
    _ssl: ssl.SSLContext | None = attrs.field(default=None, init=False)
    _limiter: _RateLimiter = attrs.field(factory=lambda: _RateLimiter(0.0), init=False)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_stopping(self) -> None:
        await self._stopping.wait()

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
                for index, start in enumerate(range(0, len(ids), size)):
                    groups.start_soon(self._group, index, ids[start : start + size])
            nursery.cancel_scope.cancel()

    async def _stop_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.stop()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._stopping.wait()

    def _backoff(self) -> Backoff:
        return Backoff(self.config.reconnect_initial, self.config.reconnect_max, random=self.rand)

    async def _group(self, index: int, peer_ids: list[str]) -> None:
        """One connection after another for a group of peers, until the simulation stops."""
        config = self.config
        backoff = self._backoff()
        edges = EdgeChooser(config.addresses(), config.edge_choice, start=config.id_offset + index, random=self.rand)
        while not self.stopping:
            await self._limiter.wait()
            if self.stopping:
                return
            host, port = edges.choose()
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    connection = await connect(host, port, ssl_context=self._ssl, server_name=config.server_name)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError):
                self.stats.connect_failures += 1
                if not config.reconnect:
                    return
                await self._sleep_unless_stopping(backoff.next_delay())
                continue
            self.stats.connections[f"{host}:{port}"] += 1
            outcome = _Outcome()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.serve)
                async with trio.open_nursery() as peers:
                    for peer_id in peer_ids:
                        peers.start_soon(self._peer, connection, peer_id, outcome)
                with trio.move_on_after(2, shield=True):
                    await connection.aclose()
                nursery.cancel_scope.cancel()
            if not config.reconnect:
                return
            await self._sleep_unless_stopping(backoff.after_session(None, outcome.registered))

    async def _peer(self, connection: GrpcClientConnection, peer_id: str, outcome: _Outcome) -> None:
        """Sessions of one peer on one connection, until the connection or the simulation ends."""
        backoff = self._backoff()
        catalog = catalog_for(peer_id, self.config.catalog_size)
        while connection.is_open and not self.stopping:
            registered, status = await self._session(connection, peer_id, catalog)
            outcome.registered = outcome.registered or registered
            if not self.config.reconnect or not connection.is_open:
                return
            await self._sleep_unless_stopping(backoff.after_session(status, registered))

    async def _session(
        self, connection: GrpcClientConnection, peer_id: str, catalog: list[str]
    ) -> tuple[bool, str | None]:
        """One stream: register, heartbeat, answer. (registered, the gRPC status name it ended with)."""
        stats = self.stats
        metadata: tuple[tuple[str, str], ...] = ()
        if self.config.token_key is not None:
            token = mint_token(peer_id, self.config.token_key, now=self.wall(), ttl_sec=TOKEN_TTL_SEC, audience=self.config.token_audience)
            metadata = (("authorization", f"Bearer {token}"),)
        try:
            stream = await connection.open_stream(CONNECT_PATH, metadata)
        except StreamEnded:
            return False, None
        started = trio.current_time()
        status: str | None = None
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
                return False, stream.status_name
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
            status = stream.status_name
            if stream.status is None:
                with trio.move_on_after(1, shield=True):
                    await stream.cancel()
            stats.stream_endings[status or "CANCELLED"] += 1
        return registered, status

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
        await trio.sleep(self.rand() * interval)
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
