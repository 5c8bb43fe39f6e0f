"""`python -m bench.loadgen HOST PORT CA`: many lean peers in one Trio process, driven by the orchestrator.

Requests (JSON lines on stdin, see bench.control), each answered when done:
    connect    {prefix, start, count, catalog, concurrency, heartbeat_sec}: open and register peers
    send       {rate, duration, burst}: file_hash_responses; rate 0 = as fast as flow control allows
    reset      {count, rate}: RST_STREAM that many streams, paced; their reset times
    commands   {}: every non-heartbeat message received since the last call, as [request_id, ns]
    wait_ended {within}: until every peer's stream has ended; how each ended
    stats      {}: counters
    leave      {}: close every peer (GOAWAY), wait for their ends, forget them (a soak's round ends)

Peers live in the process's root nursery, so they outlive the request that opened them. The
heartbeat task sends each peer a heartbeat every `heartbeat_sec`, spread evenly over the interval.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

import trio

from bench import wire
from bench.control import serve_control
from edge.proto import pb

#: Longest a single peer may take to connect and register.
CONNECT_TIMEOUT = 60.0


class LoadGen:
    def __init__(self, nursery: trio.Nursery, host: str, port: int, ca_path: str | None) -> None:
        self.nursery = nursery
        self.host = host
        self.port = port
        self.ssl_context = wire.client_ssl_context(ca_path) if ca_path else None
        self.peers: list[wire.Peer] = []
        self.commands: list[tuple[str, int]] = []
        self.heartbeats_received = 0
        self.heartbeats_sent = 0
        self._heartbeat_interval: float | None = None

    def _on_message(self, peer: wire.Peer, message: pb.EdgeMessage, now: int) -> None:
        if message.WhichOneof("payload") == "heartbeat":
            self.heartbeats_received += 1
        else:
            self.commands.append((message.request_id, now))

    async def connect(
        self, prefix: str, start: int, count: int, catalog: int, concurrency: int, heartbeat_sec: float
    ) -> dict[str, Any]:
        limiter = trio.CapacityLimiter(concurrency)
        errors: collections.Counter[str] = collections.Counter()
        began = time.time_ns()

        async def open_one(index: int) -> None:
            peer = wire.Peer(f"{prefix}{index}", self._on_message)
            async with limiter:
                try:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        await self.nursery.start(
                            peer.run, self.host, self.port, self.ssl_context, wire.registration(peer.peer_id, catalog)
                        )
                except (Exception, trio.TooSlowError) as error:  # noqa: BLE001 - counted and reported
                    errors[f"{type(error).__name__}: {error}"[:200]] += 1
                    return
            self.peers.append(peer)

        async with trio.open_nursery() as nursery:
            for index in range(start, start + count):
                nursery.start_soon(open_one, index)
        ended = time.time_ns()
        if heartbeat_sec > 0 and self._heartbeat_interval is None:
            self._heartbeat_interval = heartbeat_sec
            self.nursery.start_soon(self._heartbeats)
        return {"connected": count - sum(errors.values()), "errors": dict(errors), "began_ns": began, "ended_ns": ended}

    async def _heartbeats(self) -> None:
        payload = wire.heartbeat()
        while True:
            interval = self._heartbeat_interval
            assert interval is not None
            peers = [p for p in self.peers if not p.ended.is_set()]
            if not peers:
                await trio.sleep(interval)
                continue
            step = interval / len(peers)
            deadline = trio.current_time()
            for peer in peers:
                deadline += step
                await trio.sleep_until(deadline)
                try:
                    await peer.send([payload])
                    self.heartbeats_sent += 1
                except trio.BrokenResourceError:
                    pass

    async def send(self, rate: float, duration: float, burst: int = 8) -> dict[str, Any]:
        """Every live peer sends for `duration` s: at rate/peers each, or as fast as it can (rate 0)."""
        peers = [p for p in self.peers if not p.ended.is_set()]
        sent = 0  # file_hash_responses only (heartbeats go on meanwhile)
        cpu_before = time.process_time()
        began = time.time_ns()
        stop_at = trio.current_time() + duration
        per_peer = rate / len(peers) if rate > 0 else 0.0

        async def paced(index: int, peer: wire.Peer) -> None:
            nonlocal sent
            messages = wire.HashResponses(index)
            interval = 1 / per_peer
            at = trio.current_time() + interval * (index / len(peers))  # spread phases
            while at < stop_at:
                await trio.sleep_until(at)
                await peer.send([messages.next()])
                sent += 1
                at += interval

        async def flat_out(index: int, peer: wire.Peer) -> None:
            nonlocal sent
            messages = wire.HashResponses(index)
            while trio.current_time() < stop_at:
                await peer.send([messages.next() for _ in range(burst)])
                sent += burst

        failures = 0
        async with trio.open_nursery() as nursery:
            for index, peer in enumerate(peers):

                async def one(index: int = index, peer: wire.Peer = peer) -> None:
                    nonlocal failures
                    try:
                        await (paced if per_peer else flat_out)(index, peer)
                    except trio.BrokenResourceError:
                        failures += 1

                nursery.start_soon(one)
        ended = time.time_ns()
        return {
            "sent": sent,
            "began_ns": began,
            "ended_ns": ended,
            "peers": len(peers),
            "peers_failed": failures,
            "cpu_seconds": time.process_time() - cpu_before,
        }

    async def reset(self, count: int, rate: float) -> dict[str, Any]:
        """Reset `count` live streams, one every 1/rate s; peer id -> wall time of the reset (ns)."""
        resets: dict[str, int] = {}
        at = trio.current_time()
        for peer in [p for p in self.peers if not p.ended.is_set()][:count]:
            await trio.sleep_until(at)
            resets[peer.peer_id] = await peer.reset()
            at += 1 / rate
        return {"resets": resets}

    async def take_commands(self) -> dict[str, Any]:
        taken, self.commands = self.commands, []
        return {"commands": taken}

    async def wait_ended(self, within: float) -> dict[str, Any]:
        with trio.move_on_after(within):
            for peer in self.peers:
                await peer.ended.wait()
        reasons = collections.Counter(p.end_reason or "open" for p in self.peers)
        return {"reasons": dict(reasons), "ended_ns": {p.peer_id: p.ended_ns for p in self.peers if p.ended_ns}}

    async def stats(self) -> dict[str, Any]:
        return {
            "peers": len(self.peers),
            "open": sum(1 for p in self.peers if not p.ended.is_set()),
            "heartbeats_sent": self.heartbeats_sent,
            "heartbeats_received": self.heartbeats_received,
            "commands": len(self.commands),
            "end_reasons": dict(collections.Counter(p.end_reason for p in self.peers if p.end_reason)),
        }

    async def leave(self) -> dict[str, Any]:
        """Every peer closes its connection; once all have ended they are forgotten."""
        await self.close_all()
        with trio.move_on_after(CONNECT_TIMEOUT):
            for peer in self.peers:
                await peer.ended.wait()
        reasons = collections.Counter(p.end_reason or "open" for p in self.peers)
        self.peers = []
        return {"reasons": dict(reasons)}

    async def close_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                nursery.start_soon(peer.close)


async def main(host: str, port: int, ca_path: str | None) -> None:
    async with trio.open_nursery() as nursery:
        load = LoadGen(nursery, host, port, ca_path)
        await serve_control(
            {
                "connect": load.connect,
                "send": load.send,
                "reset": load.reset,
                "commands": load.take_commands,
                "wait_ended": load.wait_ended,
                "stats": load.stats,
                "leave": load.leave,
            }
        )
        await load.close_all()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("ca", nargs="?", help="CA certificate (PEM); without it, plaintext")
    arguments = parser.parse_args()
    trio.run(main, arguments.host, arguments.port, arguments.ca)
