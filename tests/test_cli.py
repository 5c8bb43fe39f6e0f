"""The command line as an operator meets it: help, and start-up refusals with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "KAFKA_", "EDGE_", "PEER_"))}


def run_edge(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["certs", "--help"]])
def test_help_runs(args):
    result = run_edge(*args)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m edge" in result.stdout


def test_run_help_shows_examples():
    assert "--embedded-kafka" in run_edge("run", "--help").stdout


def test_bad_env_value_exits_2_with_one_line():
    result = run_edge("run", env={"HEARTBEAT_INTERVAL_SEC": "often"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "HEARTBEAT_INTERVAL_SEC" in lines[0] and "whole number" in lines[0]


def test_tls_on_with_missing_certificate_is_an_error_not_plaintext(tmp_path):
    result = run_edge(
        "run",
        env={"GRPC_CERT_PATH": str(tmp_path / "nope.crt"), "GRPC_KEY_PATH": str(tmp_path / "nope.key")},
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "GRPC_CERT_PATH" in line and "nope.crt" in line


def test_settings_lists_every_variable():
    from edge.config import env_variables

    out = run_edge("settings").stdout
    for variable in env_variables():
        assert f"{variable}=" in out


def test_certs_writes_a_usable_chain(tmp_path):
    import ssl

    result = run_edge("certs", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    assert oct((tmp_path / "server.key").stat().st_mode & 0o777) == "0o600"


def test_version_comes_from_the_installed_package():
    from importlib.metadata import version

    import edge

    assert edge.__version__ == version("giggityflix-edge")
    result = run_edge("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"giggityflix-edge {edge.__version__}\n"


def test_console_script_names_itself():
    script = Path(sys.executable).with_name("giggityflix-edge")
    if not script.exists():
        pytest.skip(f"the console script is not installed beside {sys.executable}")
    result = subprocess.run([str(script), "run", "--help"], env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: giggityflix-edge run ")
    assert subprocess.run([str(script), "--version"], env=ENV, capture_output=True, text=True, timeout=60).stdout.startswith(
        "giggityflix-edge "
    )


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [
        ("/srv/edge/.venv/bin/giggityflix-edge", "giggityflix-edge"),
        ("/usr/lib/python3/site-packages/edge/__main__.py", "python -m edge"),
        ("something-else", "giggityflix-edge"),
    ],
)
def test_prog_name_follows_how_the_edge_was_called(argv0, prog):
    from edge.cli import prog_name

    assert prog_name(argv0) == prog
