"""The node config: the shipped example is valid; mistakes are named by file and key."""

from __future__ import annotations

from fractions import Fraction
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


# ---------------------------------------------------------------- secure aggregation


def _public_key() -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from tiaki.signing import public_key_text

    return public_key_text(ed25519.Ed25519PrivateKey.generate().public_key())


def _secure(**changes: object) -> dict[str, Any]:
    section: dict[str, Any] = {
        "peers": [
            {"node_id": "ngo-b", "signing_key": _public_key()},
            {"node_id": "ngo-c", "signing_key": _public_key()},
        ],
        "min_cohort": 3,
        "colluders": 1,
        "worst_case": {"per_query": "5", "lifetime": "100"},
    }
    section.update(changes)
    return section


def _zcdp_with(section: dict[str, Any]) -> object:
    def mutate(raw: dict[str, Any]) -> None:
        raw["policy"]["privacy_definition"] = "zcdp"
        raw["policy"]["secure_aggregation"] = section

    return mutate


def test_a_secure_aggregation_section_is_read_exactly(tmp_path: Path) -> None:
    section = _secure(worst_case={"per_query": "0.1", "lifetime": 100})
    secure = load_config(write(tmp_path, _zcdp_with(section))).policy.secure_aggregation
    assert secure is not None
    assert [p.node_id for p in secure.peers] == ["ngo-b", "ngo-c"]
    assert (secure.min_cohort, secure.colluders) == (3, 1)
    assert secure.worst_case.per_query == Fraction(1, 10)  # the decimal written, not a float's
    assert secure.worst_case.lifetime == 100


def test_without_the_section_the_node_takes_no_part() -> None:
    assert load_config(TEMPLATE).policy.secure_aggregation is None


def _peers(*node_ids: str) -> list[dict[str, str]]:
    return [{"node_id": n, "signing_key": _public_key()} for n in node_ids]


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        (
            _secure(peers=_peers("ngo-b", "ngo-b")),
            "policy.secure_aggregation",
            "node_id 'ngo-b' is listed twice",
        ),
        (
            _secure(peers=_peers("ngo-b", "ngo-c") + _peers("ngo-example")),
            "policy.secure_aggregation.peers",
            "this node's own node_id",
        ),
        (
            _secure(peers=[{"node_id": "ngo-b", "signing_key": "ssh-ed25519 AAAA"}]),
            "policy.secure_aggregation.peers.0.signing_key",
            "'ed25519:<base64>'",
        ),
        (
            _secure(peers=[{"node_id": "ngo-b", "signing_key": "ed25519:AAAA"}]),
            "policy.secure_aggregation.peers.0.signing_key",
            "not a valid Ed25519 public key",
        ),
        (_secure(min_cohort=1), "policy.secure_aggregation.min_cohort", "greater than or equal"),
        (_secure(min_cohort=4), "policy.secure_aggregation", "min_cohort 4 is more than the 3"),
        (_secure(colluders=-1), "policy.secure_aggregation.colluders", "greater than or equal"),
        (
            _secure(worst_case={"per_query": "0", "lifetime": "100"}),
            "policy.secure_aggregation.worst_case.per_query",
            "worst-case per-query cap must be greater than zero",
        ),
        (
            _secure(worst_case={"per_query": "5", "lifetime": "-1"}),
            "policy.secure_aggregation.worst_case.lifetime",
            "worst-case lifetime cap",
        ),
        (
            _secure(worst_case={"per_query": "5", "lifetime": "4"}),
            "policy.secure_aggregation.worst_case",
            "worst_case.per_query is larger than worst_case.lifetime",
        ),
        (_secure(worst_case={"per_query": "5"}), "worst_case.lifetime", "missing"),
        (_secure(threshold=3), "policy.secure_aggregation.threshold", "unknown key"),
    ],
)
def test_secure_aggregation_mistakes_are_named(
    tmp_path: Path, section: dict[str, Any], key: str, words: str
) -> None:
    path = write(tmp_path, _zcdp_with(section))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert key in message
    assert words in message


def test_secure_aggregation_needs_zcdp(tmp_path: Path) -> None:
    def pure(raw: dict[str, Any]) -> None:
        raw["policy"]["secure_aggregation"] = _secure()

    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, pure))
    message = str(info.value)
    assert "policy: " in message
    assert "secure_aggregation needs privacy_definition zcdp" in message
    assert "no distributed Laplace sampler" in message


def test_the_template_s_commented_secure_aggregation_example_is_valid(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    start = text.index("  # secure_aggregation:")
    example = "\n".join(line.replace("  # ", "  ", 1) for line in text[start:].splitlines())
    raw = yaml.safe_load(text[:start] + example + "\n")
    raw["policy"]["privacy_definition"] = "zcdp"
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(raw))
    secure = load_config(path).policy.secure_aggregation
    assert secure is not None and [p.node_id for p in secure.peers] == ["ngo-b", "ngo-c"]
    assert (secure.worst_case.per_query, secure.worst_case.lifetime) == (Fraction(5), Fraction(100))


def test_re_adding_a_node_keeps_what_it_had_and_drops_what_it_no_longer_is(
    tmp_path: Path,
) -> None:
    from coordinator.config import add_node, load_federation

    path = tmp_path / "federation.yaml"
    add_node(
        path, "ngo-a", "127.0.0.1:5", analyst="ana", server_name="ngo-a.example", insecure=True
    )
    add_node(path, "ngo-a", "127.0.0.1:6")  # a new address: the server name stays
    (entry,) = load_federation(path).nodes
    assert (entry.address, entry.server_name, entry.via) == (
        "127.0.0.1:6",
        "ngo-a.example",
        "direct",
    )
    key = "ed25519:T4GRJrjDeBCRF88wmQpfm1Nn0jCgqHV7oPDIIaBmPSE="
    add_node(path, "ngo-a", None, hub={"address": "127.0.0.1:7"}, signing_key=key)
    (entry,) = load_federation(path).nodes
    assert (entry.address, entry.via, entry.signing_key) == (None, "hub", key)
    assert entry.server_name == "ngo-a.example"
