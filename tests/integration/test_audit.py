"""``tiaki audit`` on a real federation: what real nodes and a real coordinator write verifies.

Three nodes serve mutual TLS in this process (the shared fixtures); the
coordinator is driven through its CLI. The run has what real runs have:
answered questions, a refusal (one node's budget is too small), a retry with
the same query id (replayed, charged once), a second coordinator identity, a
node stopped part way (a partial federation), and ledgers obtained both with
``tiaki ledger fetch`` and with ``tiaki-node ledger export``. Keys are taken
from the parties' key files, as an evaluator would be given them. The audit
must find no errors, and the report's totals must be the nodes' own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.config import load_federation
from node.cli.main import main as node_main
from node.exports import signing_key_path
from node.synth import write_csv
from tests.conftest import Cli, FederationPki
from tests.integration.conftest import LiveNode
from tiaki.budget import format_amount
from tiaki.signing import load_signing_key

NAMES = ("ngo-a", "ngo-b", "ngo-c")
ROOMY: dict[str, Any] = {"budget": {"limit": "10", "period": "quarterly"}, "per_query_max": "1"}
# ngo-c can afford one question of 0.5 and one of 0.25, and must refuse a second 0.5.
TIGHT: dict[str, Any] = {"budget": {"limit": "0.75", "period": "none"}, "per_query_max": "0.5"}


@dataclass(frozen=True)
class Federation:
    nodes: list[LiveNode]
    configs: list[Path]
    fed: Path  # coordinator-a's federation file
    other: Path  # coordinator-b's, asking ngo-a only


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("audit-data")
    paths = []
    for seed, name in enumerate(NAMES, start=21):
        path = root / f"{name}.csv"
        write_csv(path, 200, seed)
        paths.append(path)
    return paths


def _federation_file(
    path: Path, members: list[LiveNode], identity: str, pki: FederationPki, cli: Cli
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tls = pki.federation_tls(identity)
    for node in members:
        argv = ["nodes", "add", node.config.node_id, node.address, "--config", path]
        argv += ["--analyst", "ana", "--tls-ca", tls["ca"], "--tls-cert", tls["cert"]]
        assert cli(*argv, "--tls-key", tls["key"]).code == 0
    # The ledger's export names the coordinator by the federation file's identity:
    # make it the certificate's, which is what the nodes see and charge.
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["identity"] = identity
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _ask(cli: Cli, fed: Path, *argv: str) -> Any:
    run = cli("query", "--config", fed, *argv, "--format", "json", "--quiet")
    assert run.code == 0, run.out + run.err
    return json.loads(run.out)


@pytest.fixture
def federation(
    tmp_path: Path,
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    csvs: list[Path],
    pki: FederationPki,
    cli: Cli,
) -> Federation:
    """The federation after its history: every kind of outcome a real run produces."""
    configs = [
        make_node_config(node_id=name, policy=TIGHT if name == "ngo-c" else ROOMY) for name in NAMES
    ]
    nodes = [start_node(c, csv) for c, csv in zip(configs, csvs, strict=True)]
    fed = _federation_file(
        tmp_path / "ministry" / "federation.yaml", nodes, "coordinator-a", pki, cli
    )
    other = _federation_file(
        tmp_path / "uni" / "federation.yaml", nodes[:1], "coordinator-b", pki, cli
    )

    first = _ask(cli, fed, "count_clients", "--epsilon", "0.5")
    assert [n["status"] for n in first["nodes"]] == ["answered"] * 3
    retried = ("count", "--by", "service", "--epsilon", "0.5", "--query-id", "retry-1")
    second = _ask(cli, fed, *retried)
    again = _ask(cli, fed, *retried)
    statuses = {n["node"]: n["status"] for n in second["nodes"]}
    assert statuses["ngo-a"] == statuses["ngo-b"] == "answered"
    assert statuses["ngo-c"] in ("refused", "skipped")  # its budget is too small
    assert {n["node"]: n["status"] for n in again["nodes"]}["ngo-a"] == "replayed"
    _ask(cli, other, "count", "--epsilon", "0.25")  # another coordinator identity

    nodes[1].running.stop(grace=0)
    partial = _ask(cli, fed, "count", "--epsilon", "0.25")
    assert {n["node"]: n["status"] for n in partial["nodes"]}["ngo-b"] == "unreachable"
    return Federation(nodes, configs, fed, other)


def _collect(cli: Cli, federation: Federation, out: Path) -> list[Path]:
    """Every ledger's export: fetched through the coordinator, the stopped node's on its
    own server with ``tiaki-node ledger export``."""
    fetched = cli("ledger", "fetch", "--config", federation.fed, "--out-dir", out)
    assert fetched.code == 3, fetched.out + fetched.err  # ngo-b is down
    stopped = out / "ngo-b.jsonl"
    assert not stopped.exists()
    code = node_main(
        ["ledger", "export", "--config", str(federation.configs[1]), "--out", str(stopped)]
    )
    assert code == 0
    other = cli("ledger", "export", "--config", federation.other, "--out", out / "uni.jsonl")
    assert other.code == 0, other.err
    return sorted(out.iterdir())


def _keys(federation: Federation, path: Path) -> Path:
    """What each party would hand the evaluator: its public key, from its own key file."""
    lines = []
    for node in federation.nodes:
        key = load_signing_key(signing_key_path(node.config))
        lines.append(f'{node.config.node_id}: "{key.public_text}"')
    for fed_file, identity in (
        (federation.fed, "coordinator-a"),
        (federation.other, "coordinator-b"),
    ):
        key = load_signing_key(load_federation(fed_file).signing_key_path)
        lines.append(f'{identity}: "{key.public_text}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class _Totals(HTMLParser):
    """The node totals an HTML report shows: {subject: {field: [text, ...]}}."""

    def __init__(self) -> None:
        super().__init__()
        self.node: str | None = None
        self.field: str | None = None
        self.values: dict[str, dict[str, list[str]]] = {}
        self.verdict = ""
        self._verdict = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section" and found.get("class") == "node":
            self.node = found.get("data-subject")
        self.field = found.get("data-field")
        self._verdict = found.get("id") == "verdict"

    def handle_endtag(self, tag: str) -> None:
        self.field = None
        self._verdict = False
        if tag == "section":
            self.node = None

    def handle_data(self, data: str) -> None:
        if self._verdict:
            self.verdict += data
        if self.node is not None and self.field is not None:
            self.values.setdefault(self.node, {}).setdefault(self.field, []).append(data)


def test_a_real_federation_audits_clean_and_reports_the_nodes_totals(
    cli: Cli, federation: Federation, tmp_path: Path
) -> None:
    exports = _collect(cli, federation, tmp_path / "ledgers")
    assert [p.name for p in exports] == [
        "coordinator.jsonl",
        "ngo-a.jsonl",
        "ngo-b.jsonl",
        "ngo-c.jsonl",
        "uni.jsonl",
    ]
    keys = _keys(federation, tmp_path / "trusted-keys.yaml")

    run = cli("audit", "verify", *exports, "--keys", keys, "--format", "json")
    doc = json.loads(run.out)
    assert run.code == 0, doc["findings"]
    assert doc["errors"] == 0 and doc["warnings"] == 0, doc["findings"]
    assert doc["keys_pinned"] is True

    table = cli("audit", "verify", *exports, "--keys", keys)
    assert table.code == 0
    assert table.out.strip().splitlines()[-1].startswith("audit passed: no errors, 0 warning(s)")

    html_file = tmp_path / "audit.html"
    report = cli(
        "audit", "report", *exports, "--keys", keys, "--format", "html", "--out", html_file
    )
    assert report.code == 0, report.err
    page = _Totals()
    page.feed(html_file.read_text(encoding="utf-8"))
    assert page.verdict.startswith("audit passed")
    for node in federation.nodes:
        shown = page.values[node.config.node_id]
        entries = node.running.service.ledger.entries()
        assert shown["spent"] == [format_amount(node.budget().lifetime_spent)]
        assert shown["queries"] == [str(len(entries))]
        assert sorted(Fraction(c) for c in shown["charge"]) == sorted(e.charge for e in entries)
    # The retried question was charged once, and ngo-c never went over its budget.
    assert [n.budget().lifetime_spent for n in federation.nodes] == [
        Fraction("1.5"),  # 0.5 + 0.5 (retry-1, once) + 0.25 (coordinator-b) + 0.25
        Fraction("1"),  # stopped before the last question
        Fraction("0.75"),  # refused retry-1
    ]


def test_a_later_audit_continues_the_earlier_exports(
    cli: Cli, federation: Federation, tmp_path: Path
) -> None:
    earlier = _collect(cli, federation, tmp_path / "earlier")
    _ask(cli, federation.fed, "count", "--epsilon", "0.25", "--nodes", "ngo-a")
    later = _collect(cli, federation, tmp_path / "later")
    keys = _keys(federation, tmp_path / "trusted-keys.yaml")

    run = cli("audit", "verify", *later, "--since", *earlier, "--keys", keys, "--format", "json")
    doc = json.loads(run.out)
    assert run.code == 0, doc["findings"]
    assert doc["errors"] == doc["warnings"] == 0, doc["findings"]

    # Presented the other way round, the older exports are replays of a shorter history.
    backwards = cli("audit", "verify", *earlier, "--since", *later, "--format", "json")
    assert backwards.code == 5
    codes = {(f["code"], Path(f["export"]).name) for f in json.loads(backwards.out)["findings"]}
    assert ("replayed-export", "ngo-a.jsonl") in codes
    assert ("truncated", "coordinator.jsonl") in codes
