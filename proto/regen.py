"""Regenerate the committed protobuf and purerpc code from `proto/`, or check that it is current.

    python proto/regen.py           # rewrite edge/proto/*_pb2.py, *_pb2.pyi, *_grpc.py
    python proto/regen.py --check   # exit 1 and name the files that differ

protoc names modules after the .proto's path (`giggityflix.edge.v1`); the generated purerpc module's
import is rewritten to this package so the code needs no extra top-level package on sys.path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTO_FILE = "giggityflix/edge/v1/peer_edge.proto"
OUT_DIR = REPO / "edge" / "proto"
GENERATED = ("peer_edge_pb2.py", "peer_edge_pb2.pyi", "peer_edge_grpc.py")


def _plugin() -> str:
    found = shutil.which("protoc-gen-purerpc") or str(Path(sys.executable).parent / "protoc-gen-purerpc")
    if not Path(found).exists():
        raise SystemExit("protoc-gen-purerpc not found: install purerpc into this environment")
    return found


def generate(dest: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={dest}",
            f"--pyi_out={dest}",
            f"--purerpc_out={dest}",
            f"--plugin=protoc-gen-purerpc={_plugin()}",
            PROTO_FILE,
        ],
        check=True,
    )
    generated_dir = dest / Path(PROTO_FILE).parent
    for name in GENERATED:
        text = (generated_dir / name).read_text()
        text = text.replace(
            "import giggityflix.edge.v1.peer_edge_pb2 as", "from edge.proto import peer_edge_pb2 as"
        )
        (dest / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        generate(tmp_path)
        stale = [name for name in GENERATED if (tmp_path / name).read_text() != _read(OUT_DIR / name)]
        if args.check:
            if stale:
                print("generated code is stale: " + ", ".join(stale) + " (run python proto/regen.py)")
                return 1
            return 0
        for name in GENERATED:
            shutil.copyfile(tmp_path / name, OUT_DIR / name)
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(main())
