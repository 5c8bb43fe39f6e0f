"""The README's run command on a fresh directory: `python -m edge run --embedded-kafka --dev-certs`
(with `--embedded-kafka-port 0`: tests run side by side, the README's default port is fixed) starts
its own broker, development certificates and a development token secret; a grpcio peer without
a token is refused (UNAUTHENTICATED), one with a token from `python -m edge token` registers over TLS and
hangs up, and both lifecycle events (of the authenticated peer only) are read back from the embedded
broker; SIGTERM then exits 0."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import grpc
import pytest
import trio

from testing.grpcio_peer import GrpcioPeer
from testing.kafka.client import consume_records
from testing.process import BASE_ENV, EdgeProcess

pytestmark = pytest.mark.kafka


async def test_quickstart_slice_through_embedded_broker(tmp_path):
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(
            nursery,
            "run",
            "--embedded-kafka",
            "--embedded-kafka-port",
            "0",
            "--dev-certs",
            env={"GRPC_SERVER_ADDRESS": "127.0.0.1:0", "EDGE_ID": "quickstart"},
            cwd=tmp_path,
            peer_auth_mode=None,  # the README command as written: the default (token) applies
        )
        try:
            bootstrap = (await edge.wait_event("embedded_kafka_started"))["bootstrap"]
            port = (await edge.wait_event("edge_started"))["port"]
            root = (tmp_path / "certs" / "ca.crt").read_bytes()
            assert edge.count("peer_auth_disabled") == 0
            stranger = GrpcioPeer(port, root_certificates=root)
            try:
                stranger.register("quick-peer")
                code, details = await stranger.wait_status(timeout=60)
                assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
            finally:
                stranger.close()
            minted = await trio.run_process(
                [sys.executable, "-m", "edge", "token", "--peer-id", "quick-peer"],
                cwd=tmp_path,
                env={**BASE_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                capture_stdout=True,
                capture_stderr=True,
            )
            token = minted.stdout.decode().strip()
            peer = GrpcioPeer(port, root_certificates=root, metadata=[("authorization", f"Bearer {token}")])
            try:
                peer.register("quick-peer")
                reply = await peer.receive_kind("registration_response", timeout=60)
                assert reply.registration_response.success
                assert reply.registration_response.edge_name == "quickstart"
                peer.half_close()
                code, _ = await peer.wait_status()
                assert code == grpc.StatusCode.OK
            finally:
                peer.close()
            records = await consume_records(bootstrap, "peer-lifecycle-events", count=2, timeout=60)
            assert [(r.key, r.value["event_type"], r.value.get("reason")) for r in records] == [
                ("quick-peer", "connected", None),
                ("quick-peer", "disconnected", "stream_closed"),
            ]
            edge.signal(signal.SIGTERM)
            assert await edge.wait_exit(timeout=60) == 0
            secret = (tmp_path / "certs" / "peer-token.secret").read_text().strip()
            logged = repr(edge.events)
            assert token not in logged and token.split(".")[2] not in logged and secret not in logged
        finally:
            edge.kill()
        nursery.cancel_scope.cancel()
