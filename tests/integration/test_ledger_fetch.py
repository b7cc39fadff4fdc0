"""``tiaki ledger fetch``: every node's signed ledger over ExportLedger, and ours, into a folder.

Real node servers on free ports with mutual TLS (the shared fixtures), the
CLI run in-process through :func:`coordinator.cli.main.main`. What is written
must be byte for byte what the nodes signed, so every file must verify on
its own; nodes that fail are reported and leave no file, and the exit code
follows the table (0 all fetched, 2 usage, 3 some failed, 4 none reachable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from coordinator.client import new_query_id
from coordinator.config import load_federation
from coordinator.mirror import MirrorLedger
from node.synth import write_csv
from tests.conftest import Cli, FederationPki, Run
from tests.integration.conftest import LiveNode
from tiaki.budget import PrivacyDefinition
from tiaki.ledger_export import integrity_problems, read_export
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.signing import load_signing_key

NAMES = ("ngo-a", "ngo-b", "ngo-c")
POLICY: dict[str, Any] = {"budget": {"limit": "10", "period": "none"}, "per_query_max": "1"}


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("fetch-data")
    paths = []
    for seed, name in enumerate(NAMES, start=11):
        path = root / f"{name}.csv"
        write_csv(path, 200, seed)
        paths.append(path)
    return paths


@pytest.fixture
def nodes(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], csvs: list[Path]
) -> list[LiveNode]:
    return [
        start_node(make_node_config(node_id=name, policy=POLICY), path)
        for name, path in zip(NAMES, csvs, strict=True)
    ]


@pytest.fixture
def fed(tmp_path: Path, nodes: list[LiveNode], pki: FederationPki, cli: Cli) -> Path:
    """A federation of the three nodes, each already asked (and charged for) one question."""
    path = tmp_path / "coordinator" / "federation.yaml"
    path.parent.mkdir()
    tls = pki.federation_tls("coordinator-a")
    for node in nodes:
        argv = ["nodes", "add", node.config.node_id, node.address, "--config", path]
        argv += ["--analyst", "ana", "--tls-ca", tls["ca"], "--tls-cert", tls["cert"]]
        assert cli(*argv, "--tls-key", tls["key"]).code == 0
    run = cli("query", "count_clients", "--epsilon", "0.5", "--config", path, "--quiet")
    assert run.code == 0, run.err
    return path


def rows(run: Run) -> dict[str, list[str]]:
    """The report's rows by node name, split into words."""
    return {line.split()[0]: line.split() for line in run.out.splitlines() if line.strip()}


def mirror_question(fed: Path) -> str:
    with MirrorLedger(load_federation(fed).ledger) as mirror:
        (question,) = mirror.questions()
    return question.query_id


def test_fetch_writes_every_ledger_exactly_as_signed(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path
) -> None:
    out = tmp_path / "audit" / "ledgers"
    run = cli("ledger", "fetch", "--config", fed, "--out-dir", out)
    assert run.code == 0, run.out + run.err
    assert sorted(p.name for p in out.iterdir()) == [
        "coordinator.jsonl",
        "ngo-a.jsonl",
        "ngo-b.jsonl",
        "ngo-c.jsonl",
    ]
    assert "3 of 3 node ledgers fetched" in run.out
    query_id = mirror_question(fed)
    for node in nodes:
        path = out / f"{node.config.node_id}.jsonl"
        data = path.read_bytes()
        assert data.endswith(b"}\n") and b"\r" not in data and b"\n\n" not in data
        export = read_export(path)
        assert integrity_problems(export) == []  # the signature covers these exact bytes
        info = node.client().info()
        assert (export.source, export.subject) == ("node", node.config.node_id)
        assert (export.public_key, export.ledger_id) == (info.signing_key, info.ledger_id)
        charges = [e for e in export.entries if e.type == "charge"]
        assert [e.body["query_id"] for e in charges] == [query_id]
        assert rows(run)[node.config.node_id][1] == "ok"
    ours = read_export(out / "coordinator.jsonl")
    assert integrity_problems(ours) == []
    assert ours.source == "coordinator"
    key = load_signing_key(load_federation(fed).signing_key_path)
    assert ours.public_key == key.public_text
    asked = [e.body for e in ours.entries if e.type == "question"]
    assert [(b["query_id"], b["nodes"]) for b in asked] == [(query_id, list(NAMES))]
    assert sum(e.type == "outcome" for e in ours.entries) == 3


def test_fetch_only_the_nodes_named(cli: Cli, fed: Path, tmp_path: Path) -> None:
    out = tmp_path / "some"
    run = cli("ledger", "fetch", "--config", fed, "--out-dir", out, "--nodes", "ngo-b")
    assert run.code == 0, run.out + run.err
    assert sorted(p.name for p in out.iterdir()) == ["coordinator.jsonl", "ngo-b.jsonl"]


def test_a_stopped_node_is_reported_and_the_others_are_written(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path
) -> None:
    nodes[1].running.stop(grace=0)
    out = tmp_path / "partial"
    run = cli("ledger", "fetch", "--config", fed, "--out-dir", out)
    assert run.code == 3, run.out + run.err
    assert sorted(p.name for p in out.iterdir()) == [
        "coordinator.jsonl",
        "ngo-a.jsonl",
        "ngo-c.jsonl",
    ]
    assert rows(run)["ngo-b"][1] == "unreachable"
    assert "2 of 3 node ledgers fetched" in run.out


def test_no_node_reachable_is_exit_4(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path
) -> None:
    for node in nodes:
        node.running.stop(grace=0)
    run = cli("ledger", "fetch", "--config", fed, "--out-dir", tmp_path / "none")
    assert run.code == 4, run.out + run.err
    assert [p.name for p in (tmp_path / "none").iterdir()] == ["coordinator.jsonl"]


def altered(lines: Iterator[str]) -> Iterator[str]:
    """The node's export with one charge entry changed after signing."""
    for line in lines:
        yield line.replace('"charge":"0.5"', '"charge":"0.1"')


def test_exports_that_do_not_verify_or_parse_are_failures(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, junk = nodes[0].running.service, nodes[2].running.service
    real = bad.export_ledger
    monkeypatch.setattr(bad, "export_ledger", lambda from_seq: altered(real(from_seq)))
    monkeypatch.setattr(junk, "export_ledger", lambda from_seq: iter(["not json", "{}"]))
    out = tmp_path / "bad"
    run = cli("ledger", "fetch", "--config", fed, "--out-dir", out)
    assert run.code == 3, run.out + run.err
    report = rows(run)
    # Written, because it is evidence; reported, because it does not verify.
    assert report["ngo-a"][1] == "failed" and "does not verify" in " ".join(report["ngo-a"])
    assert integrity_problems(read_export(out / "ngo-a.jsonl")) != []
    # Not an export at all: nothing written where an audit would look.
    assert report["ngo-c"][1] == "failed" and "not valid JSON" in " ".join(report["ngo-c"])
    assert not (out / "ngo-c.jsonl").exists()
    assert report["ngo-b"][1] == "ok"
    assert "1 of 3 node ledgers fetched" in run.out


def test_a_node_named_coordinator_is_refused_before_anything_is_fetched(
    cli: Cli, fed: Path, tmp_path: Path
) -> None:
    assert cli("nodes", "add", "coordinator", "127.0.0.1:9", "--config", fed).code == 0
    out = tmp_path / "clash"
    run = cli("ledger", "fetch", "--config", fed, "--out-dir", out)
    assert run.code == 2 and run.out == ""
    assert run.err.startswith("error: a node is named 'coordinator'")
    assert not out.exists()


def test_an_auditor_listed_by_the_nodes_fetches_but_may_not_ask(
    tmp_path: Path,
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    csvs: list[Path],
    pki: FederationPki,
    cli: Cli,
) -> None:
    policy = {
        **POLICY,
        "coordinators": [{"identity": "coordinator-a"}],
        "auditors": [{"identity": "privacy-commissioner"}],
    }
    node = start_node(make_node_config(node_id="ngo-a", policy=policy), csvs[0])
    with node.client("coordinator-a") as client:
        query = Query(QueryKind.COUNT, PrivacyCost.parse(PrivacyDefinition.PURE, "0.5"))
        client.query(query, query_id=new_query_id(), analyst="ana")

    path = tmp_path / "auditor" / "federation.yaml"
    path.parent.mkdir()
    tls = pki.federation_tls("privacy-commissioner")
    argv = ["nodes", "add", "ngo-a", node.address, "--config", path, "--analyst", "auditor"]
    argv += ["--tls-ca", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    assert cli(*argv).code == 0
    out = tmp_path / "ledgers"
    run = cli("ledger", "fetch", "--config", path, "--out-dir", out)
    assert run.code == 0, run.err
    export = read_export(out / "ngo-a.jsonl")
    assert integrity_problems(export) == []
    assert [e.body["identity"] for e in export.entries if e.type == "charge"] == ["coordinator-a"]

    refused = cli("query", "count", "--epsilon", "0.1", "--config", path, "--quiet")
    assert refused.code != 0
    assert node.budget().lifetime_spent == Fraction("0.5")
