"""`python -m bench.raw_grpc CERT KEY`: the raw limit of the peer side, a bare purerpc server.

purerpc's own `Server`, as shipped, under Trio, with the edge's TLS context (`server_ssl_context`),
serving the same `Connect` method with no edge logic: it answers the registration and then
- sinks: counts every file_hash_response and its one-way latency (stamp in request_id -> handler);
- sources, when asked: sends stamped file_hash_requests to every stream, paced or flat out.
The same load generator drives it as drives the edge. Its first stdout line is {"port": N}.

Requests (bench.control): mark {} (start a measurement window), sunk {} (what arrived since the
mark), source {rate, duration} (send, then report how many were sent).
"""

from __future__ import annotations

import argparse
import array
import time
from typing import Any

import purerpc
import trio

from bench import stats, wire
from bench.control import serve_control
from edge.grpc.tls import server_ssl_context
from edge.proto import pb
from edge.proto.peer_edge_grpc import PeerEdgeServiceServicer


class Bare(PeerEdgeServiceServicer):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.arrivals = array.array("q")
        self.latencies = array.array("q")
        self.cpu_mark = time.process_time()
        self.job: trio.Event = trio.Event()
        self.job_spec: tuple[float, float] = (0.0, 0.0)
        self.streams = 0
        self.sourced = 0

    async def Connect(self, messages):  # noqa: N802 - the generated servicer's name
        first = await messages.__anext__()
        yield pb.EdgeMessage(
            request_id=first.request_id,
            registration_response=pb.PeerRegistrationResponse(
                peer_name=first.registration_request.peer_name, edge_name="bare", success=True
            ),
        )
        self.streams += 1
        index = self.streams
        if self.mode == "sink":
            async for message in messages:
                if message.WhichOneof("payload") == "file_hash_response":
                    now = time.time_ns()
                    self.arrivals.append(now)
                    self.latencies.append(now - wire.stamp_of(message.request_id))
            return
        while True:  # source mode: wait for a job, run it, wait for the next
            await self.job.wait()  # `source` swaps in a fresh Event before setting this one
            rate, until = self.job_spec
            seq = 0
            interval = 1 / rate if rate > 0 else 0.0
            at = trio.current_time() + interval * index / self.streams  # spread phases
            while trio.current_time() < until:
                if interval:
                    await trio.sleep_until(at)
                    at += interval
                seq += 1
                self.sourced += 1
                yield pb.EdgeMessage(
                    request_id=f"s{index}-{seq}-{time.time_ns()}",
                    file_hash_request=pb.FileHashRequest(catalog_uuid=f"c{seq}", hash_types=["sha256"]),
                )

    async def mark(self) -> dict[str, Any]:
        self.arrivals = array.array("q")
        self.latencies = array.array("q")
        self.cpu_mark = time.process_time()
        return {}

    async def sunk(self, expect: int = 0, within: float = 30.0) -> dict[str, Any]:
        """What arrived since the mark, once `expect` messages have (or `within` s passed)."""
        with trio.move_on_after(within):
            while len(self.arrivals) < expect:
                await trio.sleep(0.05)
        return {
            "count": len(self.arrivals),
            "rate": stats.steady_rate([t / 1e9 for t in self.arrivals]),
            "cpu_seconds": time.process_time() - self.cpu_mark,
            "latency_ms": stats.summarize([ns / 1e6 for ns in self.latencies]),
        }

    async def source(self, rate: float, duration: float) -> dict[str, Any]:
        """Every stream sends at rate/streams (rate 0: flat out) for `duration` s."""
        before, cpu = self.sourced, time.process_time()
        self.job_spec = (rate / max(self.streams, 1) if rate else 0.0, trio.current_time() + duration)
        job, self.job = self.job, trio.Event()
        job.set()
        await trio.sleep(duration + 0.2)
        return {"sent": self.sourced - before, "cpu_seconds": time.process_time() - cpu}


async def main(cert: str, key: str, mode: str) -> None:
    service = Bare(mode)
    server = purerpc.Server(port=0, ssl_context=server_ssl_context(cert, key))
    server.add_service(service.service)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve_async)
        await serve_control(
            {"mark": service.mark, "sunk": service.sunk, "source": service.source}, hello={"port": port}
        )
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cert")
    parser.add_argument("key")
    parser.add_argument("--mode", choices=("sink", "source"), default="sink")
    arguments = parser.parse_args()
    trio.run(main, arguments.cert, arguments.key, arguments.mode)
