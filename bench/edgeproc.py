"""The edge under test: a real `python -m edge run` child, pinned, optionally profiled.

Its JSON log goes to a file; a reader task watches it for the few events the bench waits on
(`edge_started` with the bound port) and counts errors. Profilers:
- py-spy (`--profile py-spy`): attached to the running edge by pid once it has started, sampling at
  100 Hz without pausing it (--nonblocking) into a speedscope file; it needs ptrace rights (root, or
  CAP_SYS_PTRACE). Out of process, so it costs the edge little; it runs on the load cores.
- pyinstrument (`--profile pyinstrument`): the edge runs inside `python -m pyinstrument`, which writes
  an HTML profile when the edge exits after SIGTERM. In process: it slows the edge down noticeably.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

#: Events of the edge's log that the bench keeps (the rest is only in the log file).
KEPT_EVENTS = frozenset({"edge_started", "kafka_producer_connected", "kafka_producer_stopped", "edge_stopped"})


def _py_spy() -> str:
    """py-spy next to this interpreter (a virtualenv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


class EdgeProcess:
    def __init__(self, process: trio.Process, log_path: Path, profiler: trio.Process | None = None) -> None:
        self.process = process
        self.log_path = log_path
        self.profiler = profiler
        self.events: dict[str, dict[str, Any]] = {}
        self.errors = 0
        self._changed = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        env: dict[str, str],
        *,
        cpus: frozenset[int],
        log_path: Path,
        profile: str | None = None,
        profile_path: Path | None = None,
        module: tuple[str, ...] = ("edge", "run"),
    ) -> EdgeProcess:
        """Start `python -m edge run` (or `module`: bench.aio_edge speaks the same environment and log)."""
        command = [sys.executable, "-m", *module]
        if profile == "pyinstrument":
            assert profile_path is not None
            command = [sys.executable, "-m", "pyinstrument", "-r", "html", "-o", str(profile_path), "-m", *module]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "KAFKA_", "EDGE_", "PEER_"))}
        process = await trio.lowlevel.open_process(
            command,
            env={**base, "LOG_FORMAT": "json", **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        edge = cls(process, log_path)
        nursery.start_soon(edge._read_log)
        await edge.wait_event("edge_started")
        if profile == "py-spy":
            assert profile_path is not None
            edge.profiler = await trio.lowlevel.open_process(
                [_py_spy(), "record", "--pid", str(process.pid), "--rate", "100", "--nonblocking",
                 "--format", "speedscope", "--output", str(profile_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_path.with_suffix(".py-spy.log").open("wb"),
            )
        return edge

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        with self.log_path.open("wb") as log:
            async for chunk in self.process.stderr:
                log.write(chunk)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if b'"level": "error"' in line or b'"level":"error"' in line:
                        self.errors += 1
                    if any(name.encode() in line for name in KEPT_EVENTS):
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        self.events.setdefault(event.get("event", ""), event)
                self._changed.set()
                self._changed = trio.Event()
        self._changed.set()

    async def wait_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while name not in self.events:
                if self.process.returncode is not None:
                    raise RuntimeError(f"edge exited with {self.process.returncode}; see {self.log_path}")
                await self._changed.wait()
        return self.events[name]

    @property
    def port(self) -> int:
        return int(self.events["edge_started"]["port"])

    def terminate(self) -> int:
        """SIGTERM; the wall time it was sent (ns)."""
        sent = time.time_ns()
        self.process.send_signal(signal.SIGTERM)
        return sent

    async def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (if still running) and wait for the exit, then for the profiler to write its file."""
        if self.process.returncode is None:
            self.terminate()
        with trio.move_on_after(timeout, shield=True):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
        if self.profiler is not None:
            with trio.move_on_after(30, shield=True):
                await self.profiler.wait()  # py-spy ends and writes when its target exits
            if self.profiler.returncode is None:
                self.profiler.send_signal(signal.SIGINT)
        return self.process.returncode
