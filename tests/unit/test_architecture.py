"""The layering is checked, not only described: ``node → tiaki ← coordinator``.

The node never imports the coordinator, the coordinator never imports the
node, the contract package (``tiaki``, under ``protos/``) imports neither,
and the audit (which reads exports offline) never imports grpc itself.
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
