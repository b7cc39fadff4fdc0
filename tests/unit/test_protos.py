"""The committed generated code must be exactly what the pinned protoc makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("node_pb2.py", "node_pb2_grpc.py", "node_pb2.pyi")


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(ROOT / "protos" / "tiaki" / "v1" / "node.proto"),
        ],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "tiaki" / "v1" / name).read_text()
        committed = (ROOT / "protos" / "tiaki" / "v1" / name).read_text()
        assert fresh == committed, f"protos/tiaki/v1/{name} is stale: run 'make protos'"


def test_generated_code_imports_as_tiaki_v1() -> None:
    from tiaki.v1 import node_pb2, node_pb2_grpc

    assert node_pb2.DESCRIPTOR.package == "tiaki.v1"
    assert hasattr(node_pb2_grpc, "NodeStub")
