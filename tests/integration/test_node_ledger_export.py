"""A real mTLS node's signed ledger: ExportLedger over gRPC, and the node CLI's ledger views."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import grpc
import pytest

from coordinator.client import new_query_id
from node.cli.main import main as node_main
from node.config import load_config
from node.exports import signing_key_path
from node.importer import import_csv
from node.service import open_service
from tests.conftest import ALLOWED_COORDINATORS
from tests.integration.conftest import LiveNode
from tiaki.budget import PrivacyDefinition, format_amount
from tiaki.chain import genesis_hash
from tiaki.errors import TiakiError
from tiaki.ledger_export import integrity_problems, parse_export, read_export
from tiaki.ledger_records import ChargeRecord, parse_record
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.v1 import node_pb2 as pb
from tiaki.v1 import node_pb2_grpc
from tiaki.wire_errors import status_code_of

AUDITOR = "coordinator-b"  # listed as an auditor, not as a coordinator, in these tests


def count(cost: str, group_by: tuple[str, ...] = ()) -> Query:
    return Query(
        QueryKind.COUNT_CLIENTS, PrivacyCost.parse(PrivacyDefinition.PURE, cost), group_by=group_by
    )


@pytest.fixture
def node(
    start_node: Callable[..., LiveNode], make_node_config: Callable[..., Path], synth_csv: Path
) -> LiveNode:
    coordinators = [{"identity": n} for n in ALLOWED_COORDINATORS if n != AUDITOR]
    path = make_node_config(
        node_id="ngo-ledger",
        policy={
            "budget": {"limit": 1},
            "coordinators": coordinators,
            "auditors": [{"identity": AUDITOR}],
        },
    )
    return start_node(path, synth_csv)


def export_over_grpc(node: LiveNode, identity: str, from_seq: int = 0) -> list[str]:
    with node.channel(identity) as channel:
        stub = node_pb2_grpc.NodeStub(channel)
        stream = stub.ExportLedger(pb.ExportLedgerRequest(from_seq=from_seq), timeout=30)
        return [message.line for message in stream]


def ask(node: LiveNode, query: Query, query_id: str | None = None) -> None:
    with node.client("coordinator-a") as client:
        client.query(query, query_id=query_id or new_query_id(), analyst="ana")


def test_export_is_signed_by_the_key_the_node_publishes_and_matches_its_ledger(
    node: LiveNode,
) -> None:
    ask(node, count("0.1", ("region",)), "q-1")
    ask(node, count("0.1", ("region",)), "q-1")  # a retry: replayed, not charged again
    ask(node, count("0.2"), "q-2")
    with pytest.raises(TiakiError):
        ask(node, count("0.9"))  # over the remaining budget: refused, nothing recorded

    export = parse_export(export_over_grpc(node, AUDITOR), "grpc")
    assert integrity_problems(export) == []
    with node.channel("coordinator-a") as channel:
        info = node_pb2_grpc.NodeStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10)
    assert export.public_key == info.signing_key != ""
    assert export.ledger_id == info.ledger_id == node.running.service.ledger.ledger_id
    assert export.subject == "ngo-ledger" and export.source == "node"
    assert export.anchor == genesis_hash(export.ledger_id)
    assert [e.type for e in export.entries] == [
        "opened", "policy", "signing_key", "period", "charge", "charge",
    ]  # fmt: skip
    charges = [
        record
        for record in (parse_record(e) for e in export.entries)
        if isinstance(record, ChargeRecord)
    ]
    ledger_entries = node.running.service.ledger.entries()
    assert [(c.query_id, c.identity, c.charge, c.canonical_query) for c in charges] == [
        (e.query_id, e.identity, e.charge, e.canonical_query) for e in ledger_entries
    ]
    assert len(charges) == 2 and all(c.analyst == "ana" for c in charges)
    assert export.header["policy"]["limit"] == "1"
    spent = sum((c.charge for c in charges), start=Fraction(0))
    assert spent == node.budget().lifetime_spent


def test_a_partial_export_links_to_the_full_history(node: LiveNode) -> None:
    ask(node, count("0.1"))
    ask(node, count("0.1"))
    full = parse_export(export_over_grpc(node, "coordinator-a"), "full")
    tail = parse_export(export_over_grpc(node, "coordinator-a", from_seq=4), "tail")
    assert integrity_problems(tail) == []
    assert tail.from_seq == 4 and tail.anchor == full.entries[2].hash
    assert [e.hash for e in tail.entries] == [e.hash for e in full.entries[3:]]


def test_who_may_export(node: LiveNode) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        export_over_grpc(node, "coord-b-not-allowed")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as beyond:
        export_over_grpc(node, AUDITOR, from_seq=10_000)
    assert beyond.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An auditor reads the ledger but may not ask.
    with node.client(AUDITOR) as client, pytest.raises(TiakiError) as asked:
        client.query(count("0.1"), query_id=new_query_id(), analyst="x")
    assert status_code_of(asked.value) == grpc.StatusCode.PERMISSION_DENIED
    assert node.budget().lifetime_spent == 0


def test_node_cli_exports_verifies_and_shows_in_plain_words(
    node: LiveNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ask(node, count("0.25", ("region",)), "q-cli")
    config = str(node.config.data_dir.parent / "node.yaml")
    out = tmp_path / "export.jsonl"

    assert node_main(["ledger", "export", "--config", config, "--out", str(out)]) == 0
    export = read_export(out)
    assert integrity_problems(export) == []
    assert export.public_key == node.running.service.signing_key.public_text
    assert [e.hash for e in export.entries] == [
        e.hash for e in parse_export(export_over_grpc(node, AUDITOR), "g").entries
    ]

    capsys.readouterr()
    assert node_main(["ledger", "verify", "--config", config]) == 0
    assert "verified" in capsys.readouterr().out

    assert node_main(["ledger", "--config", config]) == 0
    shown = capsys.readouterr().out
    assert "1 questions answered" in shown
    assert "number of clients by region" in shown and "coordinator-a (analyst ana)" in shown

    assert node_main(["ledger", "show", "--config", config, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    charged = [e for e in doc["events"] if e["cost"]]
    assert [e["who"] for e in charged] == ["coordinator-a (analyst ana)"]
    assert doc["spent_this_period"] == format_amount(node.budget().current.spent)

    assert node_main(["info", "--config", config, "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["signing_key"] == export.public_key
    assert info["tls_identity"] == "ngo-ledger"
    assert info["ledger_entries"] == export.to_seq


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["ledger", "show", "--out", "x"], "apply only to 'ledger export'"),
        (["ledger", "export", "--since", "2026-01-01"], "apply only to 'ledger show'"),
        (["ledger", "--since", "yesterday"], "YYYY-MM-DD"),
        (["ledger", "export", "--from-seq", "999"], "--from-seq must be between"),
    ],
)
def test_node_cli_ledger_mistakes_are_explained(
    node: LiveNode, argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(node.config.data_dir.parent / "node.yaml")
    before = node.running.service.ledger.head()
    assert node_main([*argv, "--config", config]) == 2
    assert fragment in capsys.readouterr().err
    assert node.running.service.ledger.head() == before


def test_a_lost_signing_key_is_replaced_visibly(
    make_node_config: Callable[..., Path], synth_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(make_node_config(node_id="ngo-rotating"))
    assert import_csv(config, synth_csv).committed
    service = open_service(config)
    first = service.signing_key.public_text
    assert service.ledger.signing_key() == first
    service.ledger.close()

    signing_key_path(config).unlink()  # lost, e.g. a restore without it
    with caplog.at_level(logging.INFO, logger="tiaki.node"):
        service = open_service(config)
    try:
        second = service.signing_key.public_text
        assert second != first and service.ledger.signing_key() == second
        keys = [e.body["public_key"] for e in service.ledger.chain()[1] if e.type == "signing_key"]
        assert keys == [first, second]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "signing key changed" in warnings[0].getMessage()
    finally:
        service.ledger.close()
