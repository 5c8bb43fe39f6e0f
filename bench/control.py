"""JSON lines between the orchestrator and its helper processes (load generators, bare servers).

The parent writes one request per line on the child's stdin (`{"op": ..., **arguments}`), the child
answers each with one line on stdout (`{"ok": true, ...}` or `{"ok": false, "error": ...}`), one
request at a time. Closing stdin asks the child to exit. The child's stderr goes to a log file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

#: Longest a line may grow (the largest reply carries every command a load process received).
MAX_LINE = 256 * 1024 * 1024
#: Time a child gets to exit after its stdin closes before it is killed.
EXIT_GRACE = 10.0

Handler = Callable[..., Awaitable[dict[str, Any]]]


async def lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    """The lines of `stream`, without their newline, until it ends."""
    buffer = bytearray()
    while True:
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            return
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            yield bytes(buffer[:end])
            del buffer[: end + 1]
        if len(buffer) > MAX_LINE:
            raise ValueError("control line too long")


# ------------------------------------------------------------------------------------ child side


async def serve_control(handlers: Mapping[str, Handler], hello: dict[str, Any] | None = None) -> None:
    """Answer requests from stdin until it closes. `hello`, if given, is written first."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    async with stdin, stdout:
        if hello is not None:
            await _write(stdout, {"ok": True, **hello})
        async for line in lines(stdin):
            request = json.loads(line)
            op = request.pop("op")
            try:
                reply = {"ok": True, **await handlers[op](**request)}
            except Exception as error:  # noqa: BLE001 - reported to the parent, which decides
                reply = {"ok": False, "error": f"{op}: {type(error).__name__}: {error}"}
            await _write(stdout, reply)


async def _write(stream: trio.abc.SendStream, value: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(value, separators=(",", ":")).encode() + b"\n")


# ----------------------------------------------------------------------------------- parent side


class ChildFailed(RuntimeError):
    pass


class Child:
    """A `python -m bench.<module>` helper process, pinned to `cpus`, spoken to in JSON lines."""

    def __init__(self, process: trio.Process, name: str, log_path: Path) -> None:
        self.process = process
        self.name = name
        self.log_path = log_path
        assert process.stdout is not None
        self._lines = lines(process.stdout)
        self._lock = trio.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls, module: str, args: list[str], *, name: str, cpus: frozenset[int], log_path: Path
    ) -> Child:
        with log_path.open("ab") as log:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            )
        return cls(process, name, log_path)

    async def hello(self, timeout: float = 60) -> dict[str, Any]:
        """The line a child writes first, unasked (e.g. the port it bound)."""
        with trio.fail_after(timeout):
            return await self._read()

    async def call(self, op: str, *, timeout: float = 600, **arguments: Any) -> dict[str, Any]:
        async with self._lock:
            assert self.process.stdin is not None
            with trio.fail_after(timeout):
                await self.process.stdin.send_all(json.dumps({"op": op, **arguments}).encode() + b"\n")
                return await self._read()

    async def _read(self) -> dict[str, Any]:
        try:
            line = await self._lines.__anext__()
        except StopAsyncIteration:
            raise ChildFailed(f"{self.name} exited ({self.process.poll()}); see {self.log_path}") from None
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise ChildFailed(f"{self.name}: {reply['error']}")
        return reply

    async def stop(self) -> None:
        """Close stdin and wait for the exit; kill after EXIT_GRACE."""
        with trio.move_on_after(EXIT_GRACE, shield=True):
            if self.process.stdin is not None:
                await self.process.stdin.aclose()
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            with trio.move_on_after(EXIT_GRACE, shield=True):
                await self.process.wait()
