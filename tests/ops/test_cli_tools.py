"""The operator tools as an operator meets them: `--help` with examples, refusals before anything is
sent, and a clear one-line failure when Kafka cannot be reached."""

from __future__ import annotations

import json
import socket

import pytest

from tests.test_cli import run_edge


@pytest.mark.parametrize(
    ("tool", "example"),
    [
        ("peer-sim", "python -m edge peer-sim --ca certs/ca.crt --peers 20"),
        ("send-command", "python -m edge send-command sim-01 file_hash"),
        ("tail", "python -m edge tail --peer sim-01 --json"),
    ],
)
def test_help_has_examples(tool, example):
    result = run_edge(tool, "--help")
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout and example in result.stdout


def test_top_level_help_lists_the_tools():
    out = run_edge("--help").stdout
    assert all(tool in out for tool in ("peer-sim", "send-command", "tail"))


def test_send_command_refuses_a_bad_command_without_kafka():
    result = run_edge("send-command", "p-1", "reboot", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "send-command: unknown command_type 'reboot'; one of: file_delete, file_hash, file_remap, "
        "screenshot_capture, batch_file_offer_response"
    )


def test_send_command_reports_an_unreachable_broker_on_one_line():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{placeholder.getsockname()[1]}"
    result = run_edge(
        "send-command", "p-1", "file_delete", "--data", json.dumps({"catalog_uuids": ["c"]}), "--timeout", "2",
        env={"KAFKA_BOOTSTRAP_SERVERS": dead},
    )
    assert result.returncode == 1
    assert f"send-command: could not send to edge-commands-edge-1 at {dead}" in result.stderr


def test_peer_sim_with_nothing_listening_reports_and_exits_1():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    result = run_edge(
        "peer-sim", "--no-tls", "--no-token", "--target", f"127.0.0.1:{port}", "--peers", "2", "--no-reconnect", "--progress-interval", "0"
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["connect_failures"] == 2 and summary["peers_ever_registered"] == 0


def test_peer_sim_refuses_an_unusable_token_secret(tmp_path):
    short = tmp_path / "short.secret"
    short.write_bytes(b"too short")
    result = run_edge("peer-sim", "--token-secret", str(short), "--peers", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == f"peer-sim: signing key {short}: every secret must be at least 32 bytes"


def test_peer_sim_spreads_over_several_edges_and_child_processes():
    """`--edge` twice (one a comma list) and two child processes: the children get every address and
    the reconnect settings, and the merged summary names the targets."""
    dead = []
    for _ in range(3):
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            dead.append(f"127.0.0.1:{placeholder.getsockname()[1]}")
    result = run_edge(
        "peer-sim", "--no-tls", "--no-token", "--edge", f"{dead[0]},{dead[1]}", "--edge", dead[2], "--peers", "4",
        "--processes", "2", "--no-reconnect", "--reconnect-initial", "0.1", "--reconnect-max", "1",
        "--progress-interval", "0",
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["target"] == ",".join(dead) and summary["processes"] == 2
    assert summary["connect_failures"] == 4 and summary["peers_ever_registered"] == 0


def test_peer_sim_refuses_a_bad_edge_address_or_reconnect_cap():
    result = run_edge("peer-sim", "--edge", "127.0.0.1:1,nowhere", "--no-token")
    assert result.returncode == 2 and result.stderr.strip() == "peer-sim: --edge must be host:port, got 'nowhere'"
    result = run_edge("peer-sim", "--reconnect-initial", "5", "--reconnect-max", "1", "--no-token")
    assert result.returncode == 2 and "--reconnect-max must be at least --reconnect-initial" in result.stderr
