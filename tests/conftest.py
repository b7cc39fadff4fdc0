"""Shared fixtures: real node directories with real records, real servers on port 0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import NodeConfig

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "node" / "templates" / "node.yaml"
PUMS_DIR = ROOT.parent / "shared" / "data" / "pums"

PUMS_SCHEMA: dict[str, Any] = {
    "identifier": "pid",
    "columns": {
        "age": {"type": "integer", "bounds": [0, 100]},
        "sex": {"type": "categorical", "categories": ["0", "1"]},
        "educ": {"type": "integer", "bounds": [1, 16]},
        "race": {"type": "categorical", "categories": ["1", "2", "3", "4", "5", "6"]},
        "income": {"type": "float", "bounds": [0, 500000]},
        "married": {"type": "categorical", "categories": ["0", "1"]},
    },
}


def node_config(
    data_dir: Path, schema: dict[str, Any], *, k: int = 4, policy: dict[str, Any] | None = None
) -> NodeConfig:
    """A validated in-memory config for unit tests: the given schema, a small pure-DP policy."""
    return NodeConfig.model_validate(
        {
            "node_id": "test-node",
            "data_dir": data_dir,
            "schema": schema,
            "policy": {
                "privacy_definition": "pure",
                "budget": {"limit": 5},
                "per_query_max": 1,
                "max_records_per_client": k,
                **(policy or {}),
            },
        }
    )


def write_node_config(
    directory: Path,
    *,
    node_id: str = "ngo-test",
    schema: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
) -> Path:
    """A node.yaml from the shipped template, with optional schema/policy overrides."""
    raw = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    raw["node_id"] = node_id
    raw["data_dir"] = "data"
    raw["server"]["address"] = "127.0.0.1:0"
    if schema is not None:
        raw["schema"] = schema
    if policy is not None:
        raw["policy"].update(policy)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "node.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from node.synth import write_csv

    path = tmp_path_factory.mktemp("synth") / "clients.csv"
    write_csv(path, 3000, 7)
    return path


@pytest.fixture
def make_node_config(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Path:
        return write_node_config(tmp_path / f"node{next(counter)}", **kwargs)

    return make


@pytest.fixture
def pums_dup() -> Iterator[Path]:
    path = PUMS_DIR / "PUMS_dup.csv"
    if not path.exists():
        pytest.fail(f"{path} is missing: the shared data folder must sit beside the repository")
    yield path
