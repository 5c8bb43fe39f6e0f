"""The README's run command on a fresh directory: `python -m edge run --embedded-kafka --dev-certs`
starts its own broker and development certificates; a grpcio peer registers over TLS and hangs up, and
both lifecycle events are read back from the embedded broker; SIGTERM then exits 0."""

from __future__ import annotations

import signal

import grpc
import pytest
import trio

from tests.grpcio_peer import GrpcioPeer
from tests.kafka.client import consume_records
from tests.process import EdgeProcess

pytestmark = pytest.mark.kafka


async def test_quickstart_slice_through_embedded_broker(tmp_path):
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(
            nursery,
            "run",
            "--embedded-kafka",
            "--dev-certs",
            env={"GRPC_SERVER_ADDRESS": "127.0.0.1:0", "EDGE_ID": "quickstart"},
            cwd=tmp_path,
        )
        try:
            bootstrap = (await edge.wait_event("embedded_kafka_started"))["bootstrap"]
            port = (await edge.wait_event("edge_started"))["port"]
            root = (tmp_path / "certs" / "ca.crt").read_bytes()
            peer = GrpcioPeer(port, root_certificates=root)
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
        finally:
            edge.kill()
        nursery.cancel_scope.cancel()
