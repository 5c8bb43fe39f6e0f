"""Server reflection: `grpcurl list` / `describe` work against the edge over TLS, and grpcio's own
reflection client resolves the peer service and its messages (v1alpha and v1)."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import grpc
import pytest
import trio
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import edge
from testing.harness import MemoryBridge
from testing.settings import tls_settings

GRPCURL_CACHE = Path.home() / ".cache" / "giggityflix-edge" / "go-bin" / "grpcurl"


def grpcurl_path() -> str | None:
    for candidate in (os.environ.get("EDGE_TEST_GRPCURL"), shutil.which("grpcurl"), str(GRPCURL_CACHE)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


async def grpcurl(binary: str, ca_path: Path, port: int, *args: str) -> str:
    with trio.fail_after(60):
        result = await trio.run_process(
            [binary, "-cacert", str(ca_path), f"localhost:{port}", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.fixture
def grpcurl_binary() -> str:
    # Skipping here, not in the async test: a skip raised under Trio loses its reason.
    binary = grpcurl_path()
    if binary is None:
        pytest.skip("grpcurl is not installed (bash .ci/run installs it with Go; grpcio's client is tested below)")
    return binary


async def test_grpcurl_lists_and_describes_the_service(grpcurl_binary, tls_files, tmp_path):
    binary = grpcurl_binary
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(tls_files.ca_pem)
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(partial(edge.serve, bridge=MemoryBridge()), tls_settings(tls_files))).grpc_port
        listed = (await grpcurl(binary, ca_path, port, "list")).split()
        assert listed == [
            "giggityflix.edge.v1.PeerEdgeService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        assert (await grpcurl(binary, ca_path, port, "list", "giggityflix.edge.v1.PeerEdgeService")).split() == [
            "giggityflix.edge.v1.PeerEdgeService.Connect"
        ]
        described = await grpcurl(binary, ca_path, port, "describe", "giggityflix.edge.v1.PeerEdgeService")
        assert "rpc Connect ( stream .giggityflix.edge.v1.PeerMessage ) returns ( stream .giggityflix.edge.v1.EdgeMessage );" in described
        message = await grpcurl(binary, ca_path, port, "describe", "giggityflix.edge.v1.PeerRegistrationResponse")
        assert "int32 heartbeat_interval_sec = 4;" in message
        health = await grpcurl(binary, ca_path, port, "grpc.health.v1.Health/Check")
        assert '"status": "SERVING"' in health
        missing = await trio.run_process(
            [binary, "-cacert", str(ca_path), f"localhost:{port}", "describe", "no.such.Thing"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert missing.returncode != 0 and b"no.such.Thing" in missing.stderr
        nursery.cancel_scope.cancel()


def _resolve(port: int, ca_pem: bytes) -> tuple[list[str], list[str], list[str]]:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("giggityflix.edge.v1.PeerEdgeService")
        method = service.FindMethodByName("Connect")
        registration = pool.FindMessageTypeByName("giggityflix.edge.v1.PeerRegistrationRequest")
        return (
            services,
            [method.input_type.full_name, method.output_type.full_name],
            [field.name for field in registration.fields],
        )


async def test_grpcio_reflection_client_resolves_the_service(tls_files):
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(partial(edge.serve, bridge=MemoryBridge()), tls_settings(tls_files))).grpc_port
        services, types, fields = await trio.to_thread.run_sync(_resolve, port, tls_files.ca_pem)
        assert "giggityflix.edge.v1.PeerEdgeService" in services and "grpc.health.v1.Health" in services
        assert types == ["giggityflix.edge.v1.PeerMessage", "giggityflix.edge.v1.EdgeMessage"]
        assert fields == ["peer_name", "catalog_uuids"]
        nursery.cancel_scope.cancel()
