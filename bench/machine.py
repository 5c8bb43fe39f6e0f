"""The machine a run happens on, and what each process on it uses (from /proc; Linux only)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import attrs

PACKAGES = ("trio", "purerpc", "h2", "trio-asyncio", "aiokafka", "protobuf", "structlog", "cryptography")
_TICK = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class CpuPlan:
    """Which cores the edge (or a bare server standing in for it) gets, and which the rest get:
    load generators, the Kafka broker, the orchestrator and profilers."""

    edge: frozenset[int]
    load: frozenset[int]

    @classmethod
    def parse(cls, edge: str | None, load: str | None) -> CpuPlan:
        available = sorted(os.sched_getaffinity(0))
        edge_cpus = _cpu_list(edge) if edge else {available[0]}
        load_cpus = _cpu_list(load) if load else (set(available) - edge_cpus or set(available))
        return cls(frozenset(edge_cpus), frozenset(load_cpus))

    def describe(self) -> dict[str, list[int]]:
        return {"edge": sorted(self.edge), "load": sorted(self.load)}


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pin(cpus: frozenset[int]) -> None:
    """Pin the calling process (children inherit it)."""
    os.sched_setaffinity(0, cpus)


def machine_info() -> dict[str, object]:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal")).split()[1])
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "java": _java_version(),
        "packages": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _java_version() -> str | None:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0] if out else None


@attrs.frozen
class ProcSample:
    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


def sample(pid: int) -> ProcSample:
    """CPU time (user + system) and resident set of process `pid`, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    kib = {name: int(status[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}
    return ProcSample(cpu, kib["VmRSS"], kib["VmHWM"])


def cpu_share(before: ProcSample, after: ProcSample, seconds: float) -> float:
    """Fraction of one core the process used between two samples."""
    return round((after.cpu_seconds - before.cpu_seconds) / seconds, 3) if seconds > 0 else float("nan")


def open_fds(pid: int) -> int:
    """How many files (sockets, pipes, epoll...) process `pid` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))
