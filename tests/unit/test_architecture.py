"""The layering is checked, not only described: ``node → tiaki ← coordinator``.

The node never imports the coordinator, the coordinator never imports the
node, the contract package (``tiaki``, under ``protos/``) imports neither,
and the audit (which reads exports offline) never imports grpc itself.
Protobuf and gRPC stay at the edge: on the coordinator only the client
speaks them, on the node only the servicer and what serves it (TLS, the
caller's identity, the ``serve`` command), and in the contract package only
the conversion modules (``convert``, and ``secagg.wire`` for secure sums) and
the wire-error module (and the receipts, which hash a reply).
Every import statement of every module is read, including those inside
functions, so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"node": ROOT / "node", "coordinator": ROOT / "coordinator", "tiaki": ROOT / "protos"}
# (package, folder inside it or None for all of it, forbidden top-level imports)
RULES = [
    ("node", None, {"coordinator"}),
    ("coordinator", None, {"node"}),
    ("tiaki", None, {"node", "coordinator"}),
    ("coordinator", "audit", {"grpc", "grpc_health", "grpc_status"}),
]


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def dotted_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``path``; ``from a import b`` gives ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def modules(package: str, folder: str | None) -> list[Path]:
    base = PACKAGES[package] / (folder or "")
    if package == "tiaki":
        base = PACKAGES["tiaki"] / "tiaki" / (folder or "")
    return sorted(p for p in base.rglob("*.py") if "_pb2" not in p.name)


@pytest.mark.parametrize(("package", "folder", "forbidden"), RULES)
def test_layering(package: str, folder: str | None, forbidden: set[str]) -> None:
    found = modules(package, folder)
    assert found, f"no modules found for {package}/{folder or ''}"
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in found
        for line, name in imports(path)
        if name in forbidden
    ]
    assert broken == []


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("def f():\n    from node.engine import plan\n    import coordinator.x\n")
    assert [name for _, name in imports(sample)] == ["node", "coordinator"]


# Each package's edge: exactly the modules (paths inside it) that import any of WIRE.
WIRE = ("tiaki.v1", "grpc", "grpc_health", "grpc_status", "google.rpc", "google.protobuf")
EDGES = [
    # The hub (ministry side) is an edge of its own: its server, its TLS, the client to it.
    (
        "coordinator",
        {"client.py", "hub_client.py", "hub_dispatch.py", "hub/server.py", "hub/cli.py"},
    ),
    ("node", {"server.py", "access.py", "tls.py", "cli/serve.py", "hub_link.py"}),
    ("tiaki", {"convert.py", "wire_errors.py", "receipts.py", "secagg/wire.py", "envelopes.py"}),
]


def _speaks_the_wire(name: str) -> bool:
    return any(name == w or name.startswith(f"{w}.") for w in WIRE)


@pytest.mark.parametrize(("package", "edge"), EDGES, ids=[e[0] for e in EDGES])
def test_protobuf_and_grpc_only_at_the_edge(package: str, edge: set[str]) -> None:
    base = PACKAGES[package] / ("tiaki" if package == "tiaki" else "")
    speakers = {
        path.relative_to(base).as_posix()
        for path in modules(package, None)
        if any(_speaks_the_wire(name) for _, name in dotted_imports(path))
    }
    assert speakers == edge  # pinned: a new speaker, or an edge that no longer speaks


def test_the_error_types_know_no_transport() -> None:
    errors = PACKAGES["tiaki"] / "tiaki" / "errors.py"
    assert not [name for _, name in dotted_imports(errors) if _speaks_the_wire(name)]


def test_the_scan_sees_a_protobuf_import(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("def f():\n    from tiaki.v1 import node_pb2 as pb\n")
    assert any(_speaks_the_wire(name) for _, name in dotted_imports(sample))
