"""The committed generated code must be exactly what the pinned protoc makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("node", "hub")
GENERATED = tuple(
    f"{p}{suffix}" for p in PROTOS for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
)


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
            *(str(ROOT / "protos" / "tiaki" / "v1" / f"{p}.proto") for p in PROTOS),
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
    from tiaki.v1 import hub_pb2, hub_pb2_grpc

    assert hub_pb2.DESCRIPTOR.package == "tiaki.v1"
    assert hasattr(hub_pb2_grpc, "HubStub")
