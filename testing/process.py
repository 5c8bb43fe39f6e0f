"""Run `python -m edge ...` as a real child process and read its JSON log lines (Trio side)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

BASE_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "KAFKA_", "EDGE_", "PEER_", "HEALTH_", "SHUTDOWN_"))},
    # Never the default 0.0.0.0:8080: tests run side by side on one machine.
    "HEALTH_HTTP_ADDRESS": "127.0.0.1:0",
}


class EdgeProcess:
    """A running `python -m edge` child; its stderr JSON log is parsed line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._new_line = trio.Event()

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, *args: str, env: dict[str, str], cwd: Path, peer_auth_mode: str | None = "none"
    ) -> EdgeProcess:
        """Start `python -m edge *args`. Peers register without proof (PEER_AUTH_MODE=none) unless the
        test says otherwise; `peer_auth_mode=None` leaves the edge's own default in force."""
        auth = {} if peer_auth_mode is None else {"PEER_AUTH_MODE": peer_auth_mode}
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "edge", *args],
            env={
                **BASE_ENV,
                "LOG_FORMAT": "json",
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                **auth,
                **env,
            },
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return cls.attach(nursery, process)

    @classmethod
    def attach(cls, nursery: trio.Nursery, process: trio.Process) -> EdgeProcess:
        """Follow the JSON log on the stderr pipe of an edge started some other way."""
        edge = cls(process)
        nursery.start_soon(edge._read_log)
        return edge

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.events.append({"event": "unparsed", "line": line.decode(errors="replace")})
            self._new_line.set()
            self._new_line = trio.Event()

    async def wait_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The first log event called `name` (waiting for it, under a deadline)."""
        with trio.fail_after(timeout):
            while True:
                for event in self.events:
                    if event.get("event") == name:
                        return event
                if self.process.returncode is not None:
                    raise AssertionError(f"edge exited with {self.process.returncode}: {self.events[-20:]}")
                await self._new_line.wait()

    def count(self, name: str, **fields: Any) -> int:
        return sum(
            1 for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        )

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 60) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
