"""The Apache Kafka broker's jars for tests: fetched once by Maven from Maven Central (testing/kafka/pom.xml)
into a cache directory, and the java binary that runs them. Plain Python: no edge import, so
`python -m testing.kafka.broker fetch` works before the project is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from testing.kafka.process import BrokerError

KAFKA_VERSION: Final = "4.4.0"
POM: Final = Path(__file__).with_name("pom.xml")
FETCHED_MARKER: Final = ".fetched"
MAVEN_TIMEOUT_SEC: Final = 900.0
LOG_TAIL_BYTES: Final = 4000


def kafka_version() -> str:
    return os.environ.get("EDGE_KAFKA_VERSION") or KAFKA_VERSION


def cache_dir(version: str | None = None) -> Path:
    """Where the jars of `version` are kept: $EDGE_KAFKA_CACHE, else the user cache."""
    override = os.environ.get("EDGE_KAFKA_CACHE")
    if override:
        return Path(override).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "giggityflix-edge" / f"kafka-{version or kafka_version()}"


def _cached(directory: Path, version: str) -> bool:
    marker = directory / FETCHED_MARKER
    try:
        return marker.read_text().strip() == version and any(directory.glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def fetch_jars(version: str | None = None, *, quiet: bool = True) -> Path:
    """Return a directory holding the broker's jars, running Maven first if it is not cached."""
    version = version or kafka_version()
    directory = cache_dir(version)
    if _cached(directory, version):
        return directory
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    command = [
        mvn,
        "-B",
        "-Dstyle.color=never",
        *(["-q"] if quiet else []),
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={staging}",
    ]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=MAVEN_TIMEOUT_SEC,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")[-LOG_TAIL_BYTES:]
            raise BrokerError(f"Maven could not fetch Kafka {version} (exit {result.returncode}):\n{output}")
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Maven ran but {staging} holds no kafka_2.13 jar")
        (staging / FETCHED_MARKER).write_text(version + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except subprocess.TimeoutExpired:
        raise BrokerError(f"Maven took longer than {MAVEN_TIMEOUT_SEC:g} s to fetch Kafka") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home, "bin", "java"), os.X_OK):
        return str(Path(java_home, "bin", "java"))
    found = shutil.which("java")
    if found is None:
        raise BrokerError("java is not on PATH (and JAVA_HOME is unset): it is needed to run Kafka")
    return found
