"""A broker as a child process, for tests: start and wait until it answers Kafka's Metadata, stop,
kill, and make sure it dies with us. Plain Python, no pytest; the brokers themselves are in
testing/kafka/broker.py (single node, Tansu) and testing/kafka/cluster.py (three nodes)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Final, Protocol

import attrs

if TYPE_CHECKING:
    from edge import broker_probe

START_TIMEOUT_SEC: Final = 90.0
STOP_TIMEOUT_SEC: Final = 30.0
KILL_TIMEOUT_SEC: Final = 10.0
PROBE_INTERVAL_SEC: Final = 0.1
LOG_TAIL_BYTES: Final = 4000


class BrokerError(RuntimeError):
    """A broker could not be fetched, formatted, started or stopped."""


# --- small helpers ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _proto() -> ModuleType:
    # Imported on first use: `fetch` must work before the edge package is importable.
    from edge import broker_probe

    return broker_probe


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    proto = _proto()
    sock.sendall(request)
    buffer = b""
    while True:
        frame = proto.split_frame(buffer)
        if frame is not None:
            return frame[0]
        chunk = sock.recv(65536)
        if not chunk:
            raise proto.KafkaProbeError("broker closed the connection mid-response")
        buffer += chunk


def probe(host: str, port: int, timeout: float = 2.0) -> tuple[broker_probe.BrokerNode, ...]:
    """ApiVersions then Metadata against host:port; the brokers listed. Raises OSError or KafkaProbeError."""
    proto = _proto()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        ranges = proto.decode_api_versions_response(_exchange(sock, proto.encode_api_versions_request(1)), 1)
        version = proto.choose_metadata_version(ranges)
        payload = _exchange(sock, proto.encode_metadata_request(version, 2))
        brokers = proto.decode_metadata_response(version, payload, 2)
    if not brokers:
        raise proto.KafkaProbeError("Metadata lists no brokers yet")
    return brokers


def _tail(*paths: Path) -> str:
    parts = []
    for path in paths:
        try:
            with path.open("rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - LOG_TAIL_BYTES))
                parts.append(f"--- {path} ---\n{file.read().decode(errors='replace')}")
        except OSError:
            continue
    return "\n".join(parts) or "(no broker output)"


def _die_with_parent(command: list[str]) -> list[str]:
    """Prefix `command` so the child gets SIGKILL if we die without cleaning up (kill -9, a crash).

    `setpriv --pdeathsig` (util-linux) sets PR_SET_PDEATHSIG and execs the command: no Python runs
    between fork and exec. The signal fires when the *thread* that forked exits, so this is done only
    from the main thread. Elsewhere, or without setpriv, the atexit hook below is the only guard.
    """
    setpriv = shutil.which("setpriv")
    if setpriv and sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL", "--", *command]
    return command


_LIVE: weakref.WeakSet[ProcessBroker] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_LIVE):
        broker.kill()


class Broker(Protocol):
    """What the pytest fixtures hand to tests."""

    host: str
    port: int

    @property
    def bootstrap(self) -> str: ...
    @property
    def persistent(self) -> bool: ...
    @property
    def is_running(self) -> bool: ...
    def start(self, timeout: float = ...) -> float: ...
    def stop(self, timeout: float = ...) -> None: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


@attrs.define(eq=False)
class ProcessBroker:
    """A broker child process with a readiness probe, graceful stop and hard kill."""

    host: str
    port: int
    work_dir: Path
    owns_work_dir: bool
    #: Seconds from spawn to answering Metadata, for the last start().
    startup_seconds: float | None = attrs.field(default=None, init=False)
    _proc: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)
    _spawned_at: float = attrs.field(default=0.0, init=False)

    @property
    def bootstrap(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def spawned_at(self) -> float:
        """time.monotonic() of the last spawn()."""
        return self._spawned_at

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def output_path(self) -> Path:
        return self.work_dir / "stdout.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _log_paths(self) -> tuple[Path, ...]:
        return (self.output_path,)

    def start(self, timeout: float = START_TIMEOUT_SEC) -> float:
        """Start the broker and wait until it answers Kafka requests; return the seconds it took."""
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the broker process without waiting for it (several at once: spawn each, then wait_ready)."""
        if self.is_running:
            raise BrokerError(f"broker {self.bootstrap} is already running")
        self._spawned_at = time.monotonic()
        with self.output_path.open("ab") as output:
            self._proc = subprocess.Popen(  # our own command line
                _die_with_parent(self._command()),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env={**os.environ, "NO_COLOR": "1"},
                start_new_session=True,  # a Ctrl-C in the terminal is ours to handle, not the JVM's
            )
        _LIVE.add(self)

    def wait_ready(self, timeout: float = START_TIMEOUT_SEC) -> float:
        """Wait until the spawned broker answers Metadata; the seconds since spawn(). Killed on failure."""
        ready = False
        try:
            self._wait_ready(self._spawned_at + timeout)
            ready = True
        finally:
            if not ready:
                self.kill()
        self.startup_seconds = time.monotonic() - self._spawned_at
        return self.startup_seconds

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        problem = "no probe finished"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"broker exited with code {code} while starting\n{_tail(*self._log_paths())}"
                )
            try:
                probe(self.host, self.port, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except (OSError, _proto().KafkaProbeError) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"broker {self.bootstrap} not ready in time ({problem})\n{_tail(*self._log_paths())}"
                )
            time.sleep(PROBE_INTERVAL_SEC)

    def stop(self, timeout: float = STOP_TIMEOUT_SEC) -> None:
        """SIGTERM and wait for a clean shutdown; SIGKILL if it takes longer than `timeout`."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        _LIVE.discard(self)

    def wait(self) -> int:
        """Block until the broker exits on its own; its exit code."""
        if self._proc is None:
            raise BrokerError("broker was never started")
        return self._proc.wait()

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to flush or deregister."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(KILL_TIMEOUT_SEC)
        _LIVE.discard(self)

    def close(self) -> None:
        """Stop the broker and remove its work directory if it made it."""
        self.stop()
        if self.owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> ProcessBroker:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def make_work_dir(work_dir: Path | str | None, prefix: str) -> tuple[Path, bool]:
    """(`work_dir`, False), created if needed; or a fresh temporary directory and True (owned)."""
    if work_dir is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    path = Path(work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path, False
