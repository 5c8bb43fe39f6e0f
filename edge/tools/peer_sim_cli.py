"""`python -m edge peer-sim` as a command: run the simulation (edge/tools/peer_sim.py) in this process,
or split the peers over `--processes` child processes and merge their JSON reports; progress lines on
stderr, one JSON summary line on stdout, signals turned into a graceful stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any, Final, TextIO

import trio

from edge.tools.peer_sim import PeerSimulation, SimConfig
from edge.tools.sim_report import merge_snapshots, progress_line, summary

#: After a stop was asked for, the simulation gets this long to end its sessions cleanly.
STOP_TIMEOUT: Final = 10.0


def _wall_ms() -> int:
    import time

    return int(time.time() * 1000)


async def run_cli(config: SimConfig, *, processes: int, child: bool, out: TextIO, err: TextIO) -> int:
    """`python -m edge peer-sim`: run, show progress, print the summary. Returns the exit code."""
    if processes > 1:
        return await _run_parent(config, processes, out, err)
    simulation = PeerSimulation(config, now_ms=_wall_ms)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, simulation)
        nursery.start_soon(_report, simulation, started, child, out, err)
        with trio.CancelScope() as run_scope:
            nursery.start_soon(_hard_stop_after_stop, simulation, run_scope)
            await simulation.run()
        nursery.cancel_scope.cancel()
    snapshot = simulation.stats.snapshot()
    elapsed = trio.current_time() - started
    if child:
        print(json.dumps({"final": True, **snapshot}), file=out, flush=True)
    else:
        print(progress_line(snapshot, elapsed), file=err, flush=True)
        print(json.dumps(summary(snapshot, _target(config), config.tls, elapsed, 1)), file=out, flush=True)
    return 0 if snapshot["peers_ever_registered"] == snapshot["peers"] else 1


async def _hard_stop_after_stop(simulation: PeerSimulation, scope: trio.CancelScope) -> None:
    await simulation.wait_stopping()
    await trio.sleep(STOP_TIMEOUT)
    scope.cancel()


async def _stop_on_signal(simulation: PeerSimulation) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if simulation.stopping:
                os._exit(1)
            simulation.stop()


async def _report(simulation: PeerSimulation, started: float, child: bool, out: TextIO, err: TextIO) -> None:
    interval = simulation.config.progress_interval
    if interval <= 0:
        return
    while True:
        await trio.sleep(interval)
        snapshot = simulation.stats.snapshot()
        if child:
            print(json.dumps(snapshot), file=out, flush=True)
        else:
            print(progress_line(snapshot, trio.current_time() - started), file=err, flush=True)


def _target(config: SimConfig) -> str:
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in config.addresses())


def _child_argv(config: SimConfig, peers: int, offset: int, width: int) -> list[str]:
    argv = [
        sys.executable, "-m", "edge", "peer-sim", "--child",
        "--edge", _target(config), "--edge-choice", config.edge_choice,
        "--reconnect-initial", str(config.reconnect_initial), "--reconnect-max", str(config.reconnect_max),
        "--peers", str(peers), "--id-prefix", config.id_prefix, "--id-offset", str(offset), "--id-width", str(width),
        "--catalog-size", str(config.catalog_size), "--offer-files", str(config.offer_files),
        "--streams-per-connection", str(config.streams_per_connection),
        "--connect-rate", str(config.connect_rate), "--progress-interval", str(config.progress_interval or 1.0),
    ]
    argv.append("--tls" if config.tls else "--no-tls")
    if config.ca_path:
        argv += ["--ca", config.ca_path]
    if config.insecure:
        argv.append("--insecure")
    if config.server_name:
        argv += ["--server-name", config.server_name]
    if config.duration is not None:
        argv += ["--duration", str(config.duration)]
    if not config.reconnect:
        argv.append("--no-reconnect")
    if config.token_ed25519_path:
        argv += ["--ed25519-key", config.token_ed25519_path]
    elif config.token_secret_path:
        argv += ["--token-secret", config.token_secret_path]
    else:
        argv.append("--no-token")
    if config.token_audience:
        argv += ["--audience", config.token_audience]
    return argv


async def _run_parent(config: SimConfig, processes: int, out: TextIO, err: TextIO) -> int:
    width = len(str(config.id_offset + config.peers))
    shares = [config.peers // processes + (1 if i < config.peers % processes else 0) for i in range(processes)]
    latest: list[dict[str, Any] | None] = [None] * processes
    finals: list[bool] = [False] * processes
    started = trio.current_time()
    children: list[trio.Process] = []

    async def read(index: int, process: trio.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                finals[index] = finals[index] or bool(report.pop("final", False))
                latest[index] = report

    async with trio.open_nursery() as nursery:
        offset = config.id_offset
        for index, share in enumerate(shares):
            # A session of its own: a terminal's Ctrl-C reaches the parent only, which forwards it
            # once (a child hit twice would exit at once, without its report).
            process = await trio.lowlevel.open_process(
                _child_argv(config, share, offset, width),
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            children.append(process)
            nursery.start_soon(read, index, process)
            offset += share

        async def forward_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    for child in children:
                        if child.returncode is None:
                            child.send_signal(signum)

        async def progress() -> None:
            while config.progress_interval > 0:
                await trio.sleep(config.progress_interval)
                reports = [r for r in latest if r is not None]
                if reports:
                    print(progress_line(merge_snapshots(reports), trio.current_time() - started), file=err, flush=True)

        helpers = trio.CancelScope()

        async def run_helpers() -> None:
            with helpers:
                async with trio.open_nursery() as inner:
                    inner.start_soon(forward_signals)
                    inner.start_soon(progress)

        nursery.start_soon(run_helpers)
        for child in children:
            await child.wait()
        helpers.cancel()
    reports = [r for r in latest if r is not None]
    if not reports:
        print("peer-sim: no child process reported", file=err)
        return 1
    merged = merge_snapshots(reports)
    elapsed = trio.current_time() - started
    print(progress_line(merged, elapsed), file=err, flush=True)
    print(json.dumps(summary(merged, _target(config), config.tls, elapsed, processes)), file=out, flush=True)
    complete = all(finals) and merged["peers_ever_registered"] == config.peers
    return 0 if complete else 1
