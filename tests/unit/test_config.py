"""The node config: the shipped example is valid; mistakes are named by file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "node" / "templates" / "node.yaml"


def test_template_is_valid_and_shipped_in_deploy() -> None:
    config = load_config(TEMPLATE)
    assert config.schema.identifier == "client_id"
    assert config.schema.numeric_bounds("circumstances_change") == (-4.0, 4.0)
    assert not config.schema.is_queryable("client_name")
    assert (ROOT / "deploy" / "examples" / "node.yaml").read_text() == TEMPLATE.read_text()


def write(tmp_path: Path, mutate: object) -> Path:
    raw = yaml.safe_load(TEMPLATE.read_text())
    mutate(raw)  # type: ignore[operator]
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _set(path: str, value: object) -> object:
    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (_set("policy.budget.limit", 0), "policy.budget.limit", "greater than zero"),
        (_set("policy.budget.limit", "nan"), "policy.budget.limit", "finite"),
        (_set("policy.budget.limit", -1), "policy.budget.limit", "greater than zero"),
        (_set("policy.per_query_max", 99), "policy", "per_query_max is larger"),
        (_set("policy.max_records_per_client", 0), "policy.max_records_per_client", ""),
        (_set("policy.privacy_definition", "approx"), "policy.privacy_definition", ""),
        (_set("policy.budget.period", "weekly"), "policy.budget.period", ""),
        (_set("policy.allowed_kinds", ["count", "median"]), "policy.allowed_kinds", ""),
        (_set("policy.colour", "blue"), "policy.colour", "unknown key"),
        (_set("schema.columns.sessions.bounds", [10, 1]), "schema.columns.sessions", "below"),
        (_set("schema.columns.sessions.bounds", [0.5, 10]), "schema.columns.sessions", "whole"),
        (_set("schema.columns.region.categories", ["a", "a"]), "schema.columns.region", "twice"),
        (_set("schema.columns.region.type", "colour"), "schema.columns.region", "type must be"),
        (
            _set("schema.columns.goals_change.expression", "goals_post * 2"),
            "schema.columns.goals_change",
            "expression",
        ),
        (
            _set("schema.columns.goals_change.expression", "goals_post - region"),
            "schema",
            "must be a declared",
        ),
        (_set("schema.recency", "region"), "schema", "date column"),
        (_set("schema.identifier", DELETE), "schema.identifier", "missing"),
        (_set("server.address", "nowhere"), "server.address", "host:port"),
        (_set("node_id", "no spaces allowed"), "node_id", ""),
    ],
)
def test_invalid_configs_name_file_and_key(
    tmp_path: Path, mutate: object, key: str, words: str
) -> None:
    path = write(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert key in message
    assert words in message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)


def test_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, _set("data_dir", "records"))
    assert load_config(path).data_dir == (tmp_path / "records").resolve()


@pytest.mark.parametrize("address", ["127.0.0.1:١٢", "127.0.0.1:port", "127.0.0.1:70000"])
def test_addresses_need_an_ascii_port(tmp_path: Path, address: str) -> None:
    from coordinator.config import FederationConfigError, add_node

    with pytest.raises(ConfigError, match="host:port"):
        load_config(write(tmp_path, _set("server.address", address)))
    with pytest.raises(FederationConfigError, match="host:port"):
        add_node(tmp_path / "federation.yaml", "ngo-a", address)
    assert not (tmp_path / "federation.yaml").exists()


def test_an_empty_server_name_is_refused_and_named(tmp_path: Path) -> None:
    from coordinator.config import FederationConfigError, add_node

    with pytest.raises(FederationConfigError, match="server name"):
        add_node(tmp_path / "federation.yaml", "ngo-a", "127.0.0.1:5", server_name="")
