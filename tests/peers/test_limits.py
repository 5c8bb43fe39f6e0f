"""Abuse limits on the wire: real TLS sockets, real grpcio peers (timing of the message meter under
MockClock: tests/grpc/test_message_meter.py; the limits' arithmetic: tests/peers/test_security_units.py).

Measured figures are printed (run with -s to see them) and asserted with wide margins: the machine is
shared, so the assertions check the shape (the flooder is cut off, the others are not and keep moving),
not exact speeds.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import trio

from edge import nursery as edge_nursery
from edge.peers.admission import Admission, load_admission
from edge.proto import CONNECT_PATH, pb
from testing.grpcio_peer import OWN_CONNECTION, GrpcioPeer
from testing.harness import MemoryBridge, running_edge
from testing.relay import Relay
from testing.settings import tls_settings



def hash_response(request_id: str) -> pb.PeerMessage:
    return pb.PeerMessage(request_id=request_id, file_hash_response=pb.FileHashResponse(catalog_uuid="c"))


async def register_all(peers: list[tuple[GrpcioPeer, str]]) -> None:
    async with trio.open_nursery() as nursery:
        for peer, peer_id in peers:

            async def one(peer: GrpcioPeer = peer, peer_id: str = peer_id) -> None:
                peer.register(peer_id)
                assert (await peer.receive_kind("registration_response")).registration_response.success

            nursery.start_soon(one)


# --------------------------------------------------------------------------------------- message flood

GOOD_PEERS = 20
GOOD_MESSAGES = 80  # each, within the burst: a well-behaved peer is never limited however fast it sends
FLOOD_MESSAGES = 20000


async def start_flooder(nursery: trio.Nursery, port: int, root_path: Path, peer_id: str) -> trio.Process:
    """tests/peers/flood_peer.py in its own process, registered and waiting for a line on stdin."""
    process = await nursery.start(
        partial(
            trio.run_process,
            [sys.executable, "-m", "tests.peers.flood_peer", "--port", str(port), "--root", str(root_path),
             "--peer-id", peer_id, "--messages", str(FLOOD_MESSAGES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
    )
    return process


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray, timeout: float = 60) -> str:
    with trio.fail_after(timeout):
        while b"\n" not in buffer:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise AssertionError(f"flooder exited; output so far: {bytes(buffer)!r}")
            buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_a_flooding_peer_is_cut_off_while_twenty_others_keep_their_throughput(tls_files, tmp_path):
    """PEER_MESSAGE_RATE=50/s, burst 100. Phase 1: 20 peers send 80 messages each at full speed
    (baseline). Phase 2: 20 other peers do the same while a 21st floods 20,000 messages from a process of
    its own. The flooder is told (RESOURCE_EXHAUSTED, why) and cut off (`disconnected`, reason
    protocol_error) after at most burst + rate x elapsed messages; every message of the 20 others
    arrives, none of them is cut off, and their throughput per CPU-second of the edge's process stays
    within a factor of 3 of the baseline (all figures, wall-clock ones too, are printed)."""
    settings = tls_settings(tls_files, peer_message_rate=50.0, peer_message_burst=100)
    root = tls_files.ca_pem
    root_path = tmp_path / "ca.pem"
    root_path.write_bytes(root)
    async with running_edge(settings, bridge=MemoryBridge()) as edge:

        def good_records(prefix: str) -> list[Any]:
            return [
                r for r in edge.bridge.published
                if str(r.record.key).startswith(f"{prefix}-good-") and r.record.value.get("catalog_uuid")
            ]

        async def phase(prefix: str, flood: bool) -> tuple[float, float]:
            peers = [
                (GrpcioPeer(edge.port, root_certificates=root, own_connection=True), f"{prefix}-good-{i}")
                for i in range(GOOD_PEERS)
            ]
            try:
                await register_all(peers)
                async with trio.open_nursery() as nursery:
                    flooder = None
                    output = bytearray()
                    if flood:
                        flooder = await start_flooder(nursery, edge.port, root_path, f"{prefix}-flooder")
                        assert await read_line(flooder.stdout, output) == "registered"
                    started = trio.current_time()
                    cpu_started = time.process_time()
                    if flooder is not None:
                        await flooder.stdin.send_all(b"go\n")
                    for peer, peer_id in peers:
                        for n in range(GOOD_MESSAGES):
                            peer.send(hash_response(f"{peer_id}-{n}"))
                    total = GOOD_PEERS * GOOD_MESSAGES
                    # Each good peer's registration made two records (connected, full catalog) before.
                    await edge.bridge.wait_for(
                        lambda: sum(edge.bridge.counts[peer_id] for _, peer_id in peers) >= total + 2 * GOOD_PEERS, timeout=60
                    )
                    cpu = time.process_time() - cpu_started
                    records = good_records(prefix)
                    elapsed = max(r.at for r in records) - started
                    if flooder is not None:
                        result = json.loads(await read_line(flooder.stdout, output))
                        assert result["code"] == "RESOURCE_EXHAUSTED"
                        assert result["details"] == "more than 50 messages per second (burst 100): slow down"
                        await edge.bridge.wait_for(lambda: any(r.key == f"{prefix}-flooder" for r in edge.bridge.records(event_type="disconnected")))
                        [gone] = [r for r in edge.bridge.published if r.record.key == f"{prefix}-flooder" and r.record.value.get("event_type") == "disconnected"]
                        assert gone.record.value["reason"] == "protocol_error"
                        accepted = sum(1 for r in edge.bridge.published if r.record.key == f"{prefix}-flooder" and r.record.value.get("catalog_uuid"))
                        cut_after = gone.at - started
                        print(f"\nflooder: {accepted} of {FLOOD_MESSAGES} accepted ({result['sent']} sent by then), "
                              f"cut off {cut_after * 1000:.0f} ms after it began")
                        assert accepted <= 100 + 50 * cut_after + 1
                assert sorted(r.record.key for r in records) == sorted(
                    peer_id for _, peer_id in peers for _ in range(GOOD_MESSAGES)
                )
                for _, peer_id in peers:
                    assert edge.registry.lookup(peer_id) is not None
                return total / elapsed, total / cpu
            finally:
                for peer, _ in peers:
                    peer.close()

        with structlog.testing.capture_logs() as logs:
            baseline, baseline_cpu = await phase("p1", flood=False)
            flooded, flooded_cpu = await phase("p2", flood=True)
        print(
            f"good peers: {baseline:.0f} msg/s alone, {flooded:.0f} msg/s beside the flooder (wall clock); "
            f"{baseline_cpu:.0f} and {flooded_cpu:.0f} msg per CPU-second of this process"
        )
        # Wall-clock figures depend on what else the (shared, 2-core) machine runs, and the flooder's own
        # process competes for the same cores; the CPU this process (the edge and the 20 peers' clients)
        # spends per good message does not, and shows what the flood costs the edge. Measured: 0.55 to
        # 1.0 of the baseline with the limit. Trio's fair scheduling alone keeps the others moving (0.57
        # to 0.64 measured with no limit at all), so this bound guards against regressions such as
        # spinning on the flooder's connection; what the limit adds is asserted above: the flooder is cut
        # off within burst + rate x elapsed messages instead of having all 20,000 published.
        assert flooded_cpu >= baseline_cpu / 3
        assert [e["event"] for e in logs].count("peer_protocol_error") == 1  # the flooder's only
        await edge.bridge.wait_for(lambda: len(edge.bridge.records(event_type="disconnected")) == 2 * GOOD_PEERS + 1)
        reasons = {r.key: r.value["reason"] for r in edge.bridge.records(event_type="disconnected")}
        assert reasons.pop("p2-flooder") == "protocol_error"
        assert set(reasons.values()) == {"stream_closed"}  # the others left at the end of their phase


# ---------------------------------------------------------------------------------- registration flood

FLOOD_ATTEMPTS = 100


def _flood_registrations(port: int, root: bytes, results: list[tuple[str, grpc.StatusCode | None]]) -> None:
    """In a worker thread: one grpcio channel (through the relay, so from 127.0.0.2) opening Connect
    streams back to back, each registering, as a flood would."""
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
    with grpc.secure_channel(f"localhost:{port}", credentials, options=[OWN_CONNECTION]) as channel:
        connect = channel.stream_stream(
            CONNECT_PATH, request_serializer=pb.PeerMessage.SerializeToString, response_deserializer=pb.EdgeMessage.FromString
        )
        calls = []
        for n in range(FLOOD_ATTEMPTS):
            requests: queue.Queue = queue.Queue()
            requests.put(
                pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name=f"flood-{n}"))
            )
            call = connect(iter(requests.get, None))
            first = next(call)
            if first.registration_response.success:
                results.append(("admitted", None))
                calls.append((call, requests))
            else:
                try:
                    next(call)
                except (grpc.RpcError, StopIteration):
                    pass
                requests.put(None)
                results.append((first.registration_response.error_message, call.code()))
        for call, requests in calls:
            requests.put(None)
            call.cancel()


async def test_a_registration_flood_from_one_address_is_throttled_without_blocking_others(tls_files):
    """PEER_REGISTRATION_RATE_PER_ADDRESS=5/s, burst 20. 100 registrations back to back from 127.0.0.2
    (a real grpcio client through a relay bound to that address): at most burst + rate x elapsed are
    admitted, the rest get RESOURCE_EXHAUSTED with a registration response saying why. Meanwhile 10
    peers from 127.0.0.1 all register, promptly (the measured latency is printed)."""
    settings = tls_settings(
        tls_files, peer_registration_rate_per_address=5.0, peer_registration_burst_per_address=20
    )
    root = tls_files.ca_pem
    results: list[tuple[str, grpc.StatusCode | None]] = []
    with structlog.testing.capture_logs() as logs:
        async with running_edge(settings, bridge=MemoryBridge()) as edge, trio.open_nursery() as nursery:
            relay_port = await nursery.start(Relay("127.0.0.1", edge.port, source_host="127.0.0.2").serve)
            flood_done = trio.Event()

            async def flood() -> None:
                await trio.to_thread.run_sync(_flood_registrations, relay_port, root, results)
                flood_done.set()

            started = trio.current_time()
            nursery.start_soon(flood)
            await edge.bridge.wait_for(lambda: len(results) >= 30, poll=0.01)  # the flood is under way, being throttled
            calm = [(GrpcioPeer(edge.port, root_certificates=root, own_connection=True), f"calm-{i}") for i in range(10)]
            latencies: list[float] = []
            try:
                async with trio.open_nursery() as calm_nursery:
                    for peer, peer_id in calm:

                        async def register(peer: GrpcioPeer = peer, peer_id: str = peer_id) -> None:
                            began = trio.current_time()
                            peer.register(peer_id)
                            reply = await peer.receive_kind("registration_response")
                            assert reply.registration_response.success, reply.registration_response.error_message
                            latencies.append(trio.current_time() - began)

                        calm_nursery.start_soon(register)
                with trio.fail_after(60):
                    await flood_done.wait()
                elapsed = trio.current_time() - started
            finally:
                for peer, _ in calm:
                    peer.close()
            nursery.cancel_scope.cancel()
    admitted = sum(1 for outcome, _ in results if outcome == "admitted")
    throttled = [(outcome, code) for outcome, code in results if outcome != "admitted"]
    print(
        f"\nflood from 127.0.0.2: {admitted} of {FLOOD_ATTEMPTS} admitted, {len(throttled)} throttled in {elapsed:.2f} s; "
        f"10 peers from 127.0.0.1 registered in {max(latencies) * 1000:.0f} ms at most"
    )
    assert len(results) == FLOOD_ATTEMPTS
    assert 20 <= admitted <= 20 + 5 * elapsed + 1
    assert set(throttled) == {
        ("too many new streams from this address (over 5 per second); retry later", grpc.StatusCode.RESOURCE_EXHAUSTED)
    }
    assert len(latencies) == 10 and max(latencies) < 5.0
    throttled_logs = [e for e in logs if e["event"] == "peer_registrations_throttled"]
    assert throttled_logs and all(e["source"] == "127.0.0.2" for e in throttled_logs)
    assert len(throttled_logs) <= admitted - 20 + 1  # one line per throttling episode, not one per stream
    assert edge.refused("address_throttled") == len(throttled)  # every one counted, though not every one logged
    assert not any(e.get("source") == "127.0.0.1" for e in logs)


# ------------------------------------------------------------------------- unregistered streams, catalog


def edge_admission(monkeypatch: pytest.MonkeyPatch) -> list[Admission]:
    """Where the Admission that `edge.serve` builds (and keeps to itself) will be, for a test that
    counts the streams it holds."""
    made: list[Admission] = []

    def load(*args: Any) -> Admission:
        made.append(load_admission(*args))
        return made[-1]

    monkeypatch.setattr(edge_nursery, "load_admission", load)
    return made


async def test_streams_waiting_to_register_are_capped(tls_files, monkeypatch):
    """MAX_UNREGISTERED_STREAMS=3: three streams that never register hold the three places; a fourth
    stream is refused at once with RESOURCE_EXHAUSTED; a registered peer is unaffected; once one of the
    three goes away a new peer registers."""
    settings = tls_settings(tls_files, max_unregistered_streams=3)
    root = tls_files.ca_pem
    admissions = edge_admission(monkeypatch)
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        [admission] = admissions
        # A grpcio call opens its stream when it is created: each peer is made only when its turn comes.
        peers = [GrpcioPeer(edge.port, root_certificates=root, own_connection=True)]
        try:
            registered = peers[0]
            registered.register("peer-r")
            assert (await registered.receive_kind("registration_response")).registration_response.success
            silent = [GrpcioPeer(edge.port, root_certificates=root, own_connection=True) for _ in range(3)]
            peers += silent
            await edge.bridge.wait_for(lambda: admission.unregistered_streams == 3, poll=0.01)
            late = GrpcioPeer(edge.port, root_certificates=root, own_connection=True)
            peers.append(late)
            late.register("peer-late")
            reply = await late.receive_kind("registration_response")
            assert not reply.registration_response.success
            code, details = await late.wait_status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details == "edge has too many streams waiting to register; retry later"
            assert edge.refused("unregistered_streams_full") == 1 and edge.refused("address_throttled") == 0
            silent[0].cancel()
            await edge.bridge.wait_for(lambda: admission.unregistered_streams == 2, poll=0.01)
            after = GrpcioPeer(edge.port, root_certificates=root, own_connection=True)
            peers.append(after)
            after.register("peer-after")
            assert (await after.receive_kind("registration_response")).registration_response.success
            registered.send(hash_response("still-here"))
            await edge.bridge.wait_for(lambda: any(r.value.get("request_id") == "still-here" for r in edge.bridge.records()))
            assert admission.unregistered_streams == 2
        finally:
            for peer in peers:
                peer.close()


async def test_catalog_over_max_catalog_size_is_refused_and_publishes_nothing(tls_files):
    """MAX_CATALOG_SIZE=3: a registration with 4 catalog ids is refused (RESOURCE_EXHAUSTED, a registration
    response saying so) before anything is published; exactly 3 is accepted."""
    settings = tls_settings(tls_files, max_catalog_size=3)
    root = tls_files.ca_pem
    async with running_edge(settings, bridge=MemoryBridge()) as edge:
        big = GrpcioPeer(edge.port, root_certificates=root)
        fits = GrpcioPeer(edge.port, root_certificates=root)
        try:
            big.register("peer-big", catalog=["a", "b", "c", "d"])
            reply = await big.receive_kind("registration_response")
            assert reply.registration_response.error_message == (
                "registration carries 4 catalog ids, more than 3 (MAX_CATALOG_SIZE)"
            )
            assert (await big.wait_status())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            fits.register("peer-fits", catalog=["a", "b", "c"])
            assert (await fits.receive_kind("registration_response")).registration_response.success
            await edge.bridge.wait_for(lambda: len(edge.bridge.records()) >= 2)
        finally:
            big.close()
            fits.close()
    assert {r.key for r in edge.bridge.records()} == {"peer-fits"}
