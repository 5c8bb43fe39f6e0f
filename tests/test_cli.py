"""The command line as an operator meets it: help, and start-up refusals with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "KAFKA_", "EDGE_", "PEER_"))}


def run_edge(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["certs", "--help"]])
def test_help_runs(args):
    result = run_edge(*args)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m edge" in result.stdout


def test_run_help_shows_examples():
    assert "--embedded-kafka" in run_edge("run", "--help").stdout


def test_bad_env_value_exits_2_with_one_line():
    result = run_edge("run", env={"HEARTBEAT_INTERVAL_SEC": "often"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "HEARTBEAT_INTERVAL_SEC" in lines[0] and "whole number" in lines[0]


def test_tls_on_with_missing_certificate_is_an_error_not_plaintext(tmp_path):
    result = run_edge(
        "run",
        env={"GRPC_CERT_PATH": str(tmp_path / "nope.crt"), "GRPC_KEY_PATH": str(tmp_path / "nope.key")},
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "GRPC_CERT_PATH" in line and "nope.crt" in line


def test_settings_lists_every_variable():
    from edge.config import env_variables

    out = run_edge("settings").stdout
    for variable in env_variables():
        assert f"{variable}=" in out


def test_certs_writes_a_usable_chain(tmp_path):
    import ssl

    result = run_edge("certs", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    assert oct((tmp_path / "server.key").stat().st_mode & 0o777) == "0o600"
