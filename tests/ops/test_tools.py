"""The operator tools against a running edge process and the real broker: `peer-sim` peers register
with tokens signed by the edge's secret (seen by `tail`), `send-command` puts a command on the edge's topic (seen by `tail`), the simulated
peer answers it (its response seen by `tail`), and peer-sim ends with its JSON summary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from testing.kafka.client import create_topics
from testing.process import BASE_ENV, EdgeProcess

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def tool_env(edge_id: str, bootstrap: str, idempotence: bool) -> dict[str, str]:
    return {
        "EDGE_ID": edge_id,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "true" if idempotence else "false",
        "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": f"{edge_id}-lifecycle",
        "KAFKA_PEER_PRESENCE_TOPIC": f"{edge_id}-presence",
        "KAFKA_PEER_CATALOG_UPDATES_TOPIC": f"{edge_id}-catalog",
        "KAFKA_FILE_DELETE_RESPONSES_TOPIC": f"{edge_id}-delete",
        "KAFKA_FILE_HASH_RESPONSES_TOPIC": f"{edge_id}-hash",
        "KAFKA_FILE_REMAP_RESPONSES_TOPIC": f"{edge_id}-remap",
        "KAFKA_SCREENSHOT_CAPTURE_RESPONSES_TOPIC": f"{edge_id}-shot",
    }


async def run_tool(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    with trio.fail_after(timeout):
        return await trio.run_process(
            [sys.executable, "-m", "edge", *args],
            env={**BASE_ENV, "PYTHONPATH": str(REPO), **env},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def json_lines(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]


async def test_peer_sim_answers_a_command_sent_with_send_command_as_seen_by_tail(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files, tmp_path
):
    edge_id = kafka_topic_prefix
    env = tool_env(edge_id, kafka_bootstrap, kafka_supports_idempotence)
    topics = [value for key, value in env.items() if key.endswith("_TOPIC")]
    await create_topics(kafka_bootstrap, [*topics, f"edge-commands-{edge_id}", f"edge-commands-{edge_id}.deadletter"])
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(tls_files.ca_pem)
    secret = tmp_path / "peer-token.secret"
    secret.write_bytes(b"a-test-secret-of-at-least-32-bytes-0123456789\n")
    edge_env = {
        **env,
        "PEER_AUTH_MODE": "token",
        "PEER_TOKEN_HMAC_SECRET_PATH": str(secret),
        "GRPC_SERVER_ADDRESS": "127.0.0.1:0",
        "GRPC_CERT_PATH": str(tls_files.cert_path),
        "GRPC_KEY_PATH": str(tls_files.key_path),
    }
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(nursery, "run", env=edge_env, cwd=tmp_path)
        sim = None
        try:
            port = (await edge.wait_event("edge_started"))["port"]
            sim = await trio.lowlevel.open_process(
                [
                    sys.executable, "-m", "edge", "peer-sim", "--target", f"127.0.0.1:{port}", "--ca", str(ca_path),
                    "--server-name", "localhost", "--token-secret", str(secret), "--peers", "3", "--id-prefix", f"{edge_id}-p", "--progress-interval", "0.5",
                ],
                env={**BASE_ENV, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            peer = f"{edge_id}-p-1"

            # tail sees the three registrations
            lifecycle = json_lines(await run_tool(env, "tail", "--topics", "lifecycle", "--from-beginning", "--json", "--count", "3", "--timeout", "60"))
            assert sorted(r["key"] for r in lifecycle) == [f"{edge_id}-p-1", f"{edge_id}-p-2", f"{edge_id}-p-3"]
            assert {r["value"]["event_type"] for r in lifecycle} == {"connected"}

            # send-command puts a file_hash command on the edge's topic, keyed by the peer
            [sent] = json_lines(await run_tool(
                env, "send-command", peer, "file_hash", "--data", '{"catalog_uuid": "c-42", "hash_types": ["sha256", "md5"]}'
            ))
            assert sent["topic"] == f"edge-commands-{edge_id}" and sent["peer_id"] == peer
            [command] = json_lines(await run_tool(env, "tail", "--topics", "commands", "--from-beginning", "--json", "--count", "1", "--timeout", "60"))
            assert command["key"] == peer
            assert command["value"]["command_type"] == "file_hash" and command["value"]["request_id"] == sent["request_id"]

            # the simulated peer answered; tail (readable form) shows the response with the request id
            result = await run_tool(env, "tail", "--topics", "responses", "--from-beginning", "--count", "1", "--timeout", "60")
            assert result.returncode == 0, result.stderr.decode()
            line = result.stdout.decode().strip()
            assert f"{edge_id}-hash[" in line and peer in line and sent["request_id"] in line and "c-42" in line

            # bad input is refused before anything is sent
            refused = await run_tool(env, "send-command", peer, "file_hash", "--data", '{"catalog_uuid": 7}')
            assert refused.returncode == 2 and b"command_data.catalog_uuid must be a string" in refused.stderr

            sim.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                await sim.wait()
            out = await sim.stdout.receive_some(1 << 20)
            progress = await sim.stderr.receive_some(1 << 20)
        finally:
            if sim is not None and sim.returncode is None:
                sim.kill()
            edge.signal(signal.SIGTERM)
            await edge.wait_exit(timeout=30)
            edge.kill()
        nursery.cancel_scope.cancel()
    assert sim.returncode == 0
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["event"] == "peer_sim_summary"
    assert summary["peers"] == 3 and summary["peers_ever_registered"] == 3
    assert summary["commands_received"] == {"file_hash_request": 1} and summary["responses_sent"] == 1
    assert summary["stream_endings"] == {"OK": 3}
    assert b"registered 3/3" in progress
