"""The ``tiaki`` command line end to end: every command and output format, and its errors.

Each test runs :func:`coordinator.cli.main.main` in-process against real node
servers on free ports (three small synthetic NGOs, mutual TLS as the shared
fixtures start them), reads what it printed with
``capsys`` and checks the exit code against the documented table (0 success,
2 usage, 3 refused, 4 unreachable). Whenever a command must spend nothing,
the nodes' own ledgers are compared before and after.
"""

from __future__ import annotations

import copy
import csv
import re
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.config import load_federation
from coordinator.query_files import load_query_file
from tests.conftest import ROOT, TEMPLATE, Cli, FederationPki
from tests.integration.conftest import (
    BIG_POLICY,
    NAMES,
    LiveNode,
    ledgers,
    mirror_questions,
    stop,
    write_federation,
)
from tiaki.budget import format_amount
from tiaki.node_info import NodeInfo

OUTCOMES = ROOT / "deploy" / "examples" / "queries" / "outcomes.yaml"
OUTCOME_QUERIES = tuple(load_query_file(OUTCOMES))
TEMPLATE_SCHEMA: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["schema"]
SERVICES = tuple(TEMPLATE_SCHEMA["columns"]["service"]["categories"])
REGIONS = tuple(TEMPLATE_SCHEMA["columns"]["region"]["categories"])
DROPPED_REGION = "southland"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def csv_without_dropped_region(csvs: list[Path]) -> Path:
    """The last NGO's records minus the region its odd schema does not declare."""
    path = csvs[-1].with_name("no-" + DROPPED_REGION + ".csv")
    with csvs[-1].open(newline="", encoding="utf-8") as src:
        reader = csv.DictReader(src)
        assert reader.fieldnames is not None
        with path.open("w", newline="", encoding="utf-8") as dst:
            writer = csv.DictWriter(dst, reader.fieldnames, lineterminator="\n")
            writer.writeheader()
            writer.writerows(r for r in reader if r["region"] != DROPPED_REGION)
    return path


@pytest.fixture
def odd_fed(
    tmp_path: Path,
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    csvs: list[Path],
    csv_without_dropped_region: Path,
    pki: FederationPki,
    capsys: pytest.CaptureFixture[str],
) -> tuple[Path, list[LiveNode]]:
    """Two template nodes and a third whose region list lacks one region."""
    schema = copy.deepcopy(TEMPLATE_SCHEMA)
    schema["columns"]["region"]["categories"].remove(DROPPED_REGION)
    members = [
        start_node(make_node_config(node_id=NAMES[0], policy=BIG_POLICY), csvs[0]),
        start_node(make_node_config(node_id=NAMES[1], policy=BIG_POLICY), csvs[1]),
        start_node(
            make_node_config(node_id=NAMES[2], policy=BIG_POLICY, schema=schema),
            csv_without_dropped_region,
        ),
    ]
    path = write_federation(tmp_path / "federation.yaml", members, pki)
    capsys.readouterr()
    return path, members


# ---------------------------------------------------------------- helpers


def slow_info(monkeypatch: pytest.MonkeyPatch, node: LiveNode, seconds: float) -> None:
    """Make this node answer GetInfo late, to fix the order in which nodes respond."""
    service = node.running.service
    original = service.info

    def late() -> NodeInfo:
        time.sleep(seconds)
        return original()

    monkeypatch.setattr(service, "info", late)


def table_rows(text: str) -> dict[str, list[str]]:
    """A tabulate table's body rows keyed by their first cell (columns split on 2+ spaces).

    A wrapped cell continues on lines whose first column is blank; those are
    the same row's, and only its first line is kept.
    """
    rows: dict[str, list[str]] = {}
    for line in text.splitlines()[2:]:
        if not line.strip():
            break  # the table ends at the first blank line
        if line.startswith(" "):
            continue
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


# ---------------------------------------------------------------- tiaki, --help, --version


def test_no_command_is_a_usage_error(cli: Cli) -> None:
    run = cli()
    assert run.code == 2
    assert "required: COMMAND" in run.err and "Traceback" not in run.err


def test_help_exits_0_and_documents_the_exit_codes(cli: Cli) -> None:
    run = cli("--help")
    assert run.code == 0
    assert "exit codes:" in run.out
    for code in ("0  success", "2  bad arguments", "3  refused", "4  unreachable"):
        assert code in run.out
    query_help = cli("query", "--help")
    assert query_help.code == 0 and "exit codes:" in query_help.out


def test_version_exits_0(cli: Cli) -> None:
    run = cli("--version")
    assert run.code == 0 and run.out.startswith("tiaki ")


# ---------------------------------------------------------------- nodes add


def test_nodes_add_creates_the_federation_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "new" / "federation.yaml"
    path.parent.mkdir()
    run = cli("nodes", "add", "ngo-a", "127.0.0.1:50051", "--config", path, "--analyst", "ana")
    assert run.code == 0
    assert run.out.strip() == f"added node ngo-a at 127.0.0.1:50051 in {path}"
    config = load_federation(path)
    assert config.analyst == "ana"
    assert [(n.name, n.address) for n in config.nodes] == [("ngo-a", "127.0.0.1:50051")]
    assert config.ledger == (path.parent / "coordinator-ledger.sqlite").resolve()


def test_nodes_add_updates_an_existing_nodes_address(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    assert cli("nodes", "add", "ngo-a", "127.0.0.1:5001", "--config", path).code == 0
    assert cli("nodes", "add", "ngo-b", "127.0.0.1:5002", "--config", path).code == 0
    run = cli("nodes", "add", "ngo-a", "10.0.0.7:6001", "--config", path)
    assert run.code == 0 and run.out.startswith("updated node ngo-a at 10.0.0.7:6001")
    config = load_federation(path)
    assert [(n.name, n.address) for n in config.nodes] == [
        ("ngo-a", "10.0.0.7:6001"),
        ("ngo-b", "127.0.0.1:5002"),
    ]


@pytest.mark.parametrize(
    ("name", "address", "problem"),
    [
        ("ngo a", "127.0.0.1:5001", "name"),
        ("ngo/a", "127.0.0.1:5001", "name"),
        ("ngo-b", "localhost", "'localhost' must be host:port"),
        ("ngo-b", "127.0.0.1:99999", "'127.0.0.1:99999' must be host:port"),
        ("ngo-b", ":5001", "':5001' must be host:port"),
    ],
    ids=["space-in-name", "slash-in-name", "no-port", "port-too-big", "no-host"],
)
def test_nodes_add_refuses_an_invalid_name_or_address(
    cli: Cli, tmp_path: Path, name: str, address: str, problem: str
) -> None:
    path = tmp_path / "federation.yaml"
    assert cli("nodes", "add", "ngo-z", "127.0.0.1:5000", "--config", path).code == 0
    before = path.read_text(encoding="utf-8")
    run = cli("nodes", "add", name, address, "--config", path)
    assert run.code == 2
    assert problem in run.error_line()
    assert path.read_text(encoding="utf-8") == before


def test_nodes_add_refuses_to_edit_an_invalid_federation_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("analyst: ana\ncolour: red\nnodes: []\n", encoding="utf-8")
    run = cli("nodes", "add", "ngo-a", "127.0.0.1:5001", "--config", path)
    assert run.code == 2
    # One headline plus one indented line per problem, each naming the key.
    assert run.err.startswith(f"error: {path}: invalid federation file:")
    assert "colour: unknown key" in run.err and "Traceback" not in run.err
    assert path.read_text(encoding="utf-8") == "analyst: ana\ncolour: red\nnodes: []\n"


def test_nodes_add_refuses_to_edit_a_malformed_yaml_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("analyst: ana\nnodes: [\n", encoding="utf-8")
    run = cli("nodes", "add", "ngo-a", "127.0.0.1:5001", "--config", path)
    assert path.read_text(encoding="utf-8") == "analyst: ana\nnodes: [\n"
    assert run.code == 2
    assert "not valid YAML" in run.error_line()


# ---------------------------------------------------------------- nodes (listing)


def test_nodes_lists_every_reachable_node_with_its_budget(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    run = cli("nodes", "--config", fed)
    assert run.code == 0
    header = run.out.splitlines()[0].split()
    assert header == [
        "node", "address", "reachable", "accounts", "in", "schema", "left", "secure", "sums",
        "about",
    ]  # fmt: skip
    rows = table_rows(run.out)
    assert list(rows) == list(NAMES)
    for node in nodes:
        name, address, reachable, accounts, schema, left, secure, about = rows[node.config.node_id]
        assert (address, reachable, accounts, schema) == (node.address, "yes", "ε (pure)", "yes")
        assert left == "100 (lifetime)" and secure == "no"
        assert about.startswith(f"{name}, data ")


def test_nodes_marks_a_stopped_node_unreachable(cli: Cli, fed: Path, nodes: list[LiveNode]) -> None:
    stop(nodes[1])
    run = cli("nodes", "--config", fed)
    assert run.code == 0
    rows = table_rows(run.out)
    assert rows["ngo-a"][2] == "yes" and rows["ngo-c"][2] == "yes"
    assert rows["ngo-b"][:3] == ["ngo-b", nodes[1].address, "no"]
    assert rows["ngo-b"][3] != "yes"  # the reason, not a schema verdict


def test_nodes_flags_the_node_whose_schema_differs(
    cli: Cli, odd_fed: tuple[Path, list[LiveNode]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed_file, members = odd_fed
    # The odd node answers last, so a matching node is the reference.
    slow_info(monkeypatch, members[2], 0.3)
    run = cli("nodes", "--config", fed_file)
    assert run.code == 0
    rows = table_rows(run.out)
    assert rows["ngo-a"][4] == "yes" and rows["ngo-b"][4] == "yes"
    assert rows["ngo-c"][2] == "yes"
    assert rows["ngo-c"][4] == "differs: region"


def test_nodes_flags_the_odd_schema_whichever_node_answers_first(
    cli: Cli, odd_fed: tuple[Path, list[LiveNode]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed_file, members = odd_fed
    slow_info(monkeypatch, members[0], 0.3)
    slow_info(monkeypatch, members[1], 0.3)
    run = cli("nodes", "--config", fed_file)
    assert run.code == 0
    rows = table_rows(run.out)
    assert [rows[n][4] for n in NAMES] == ["yes", "yes", "differs: region"]


def test_nodes_exits_4_when_no_node_is_reachable(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    for node in nodes:
        stop(node)
    run = cli("nodes", "--config", fed)
    assert run.code == 4
    assert [r[2] for r in table_rows(run.out).values()] == ["no", "no", "no"]


# ---------------------------------------------------------------- query: output formats


def test_query_table_lists_cells_in_schema_order_with_coverage_and_ci(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    run = cli("query", "--config", fed, "count", "--by", "region", "--epsilon", "0.5")
    assert run.code == 0
    lines = run.out.splitlines()
    assert lines[0] == "count by region; epsilon 0.5 per node"  # the whole question
    assert lines[2].split() == ["region", "estimate", "95%", "CI", "nodes"]
    body = lines[4 : 4 + len(REGIONS)]
    assert [line.split()[0] for line in body] == list(REGIONS)
    for line in body:
        match = re.fullmatch(r"\S+\s+(-?\d+)\s+(-?\d+) – (-?\d+)\s+3", line)
        assert match, line
        estimate, low, high = (int(g) for g in match.groups())
        assert low <= estimate <= high
    assert "coverage: 3 of 3 nodes (ngo-a, ngo-b, ngo-c)" in lines
    assert (
        "charged (each node accounts for its own clients): "
        "ngo-a epsilon 0.5, ngo-b epsilon 0.5, ngo-c epsilon 0.5"
    ) in lines
    assert any(line.startswith("CI method: ") for line in lines)
    assert lines[-1].startswith("Confidence intervals cover the differential-privacy noise only")
    # Progress on stderr, one line per node asked.
    assert len(re.findall(r"\[\d/3\] ngo-[abc] answered", run.err)) == 3
    assert ledgers(nodes) == [(Fraction(1, 2), 1)] * 3


def test_query_quiet_prints_no_progress(cli: Cli, fed: Path) -> None:
    run = cli("query", "--config", fed, "count", "--epsilon", "0.5", "--quiet")
    assert run.code == 0 and run.err == ""


def test_query_json_has_the_documented_keys_and_exact_charges(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    args = ("count_clients", "--by", "service", "--epsilon", "0.3")
    run = cli("query", "--config", fed, *args, "--format", "json")
    assert run.code == 0
    doc = run.json()
    assert set(doc) == {
        "query_id",
        "title",
        "query",
        "cost_per_node",
        "counting",
        "released",
        "coverage",
        "cells",
        "nodes",
        "note",
    }
    assert doc["title"] == "count_clients by service; epsilon 0.3 per node"
    assert doc["cost_per_node"] == {"epsilon": "0.3"}
    assert re.fullmatch(r"[0-9a-f]{32}", doc["query_id"])
    assert doc["query"]["kind"] == "count_clients"
    assert doc["query"]["group_by"] == ["service"]
    assert doc["query"]["cost"] == {"epsilon": "0.3"}
    assert doc["released"] is True
    assert doc["coverage"] == {"answered": list(NAMES), "total": 3}
    assert [c["group"] for c in doc["cells"]] == [{"service": s} for s in SERVICES]
    for cell in doc["cells"]:
        low, high = cell["ci95"]
        assert low <= cell["estimate"] <= high
        assert cell["half_width"] > 0 and cell["nodes"] == 3 and cell["method"]
        assert "bin" not in cell
    assert [n["node"] for n in doc["nodes"]] == list(NAMES)
    for node, entry in zip(nodes, doc["nodes"], strict=True):
        assert entry["status"] == "answered" and entry["reason"] == ""
        assert entry["attempts"] == 1 and entry["seconds"] >= 0
        # Exact decimal text of the node's ledger charge: exactly what was asked.
        (charge,) = [e.charge for e in node.running.service.ledger.entries()]
        assert entry["charged"] == format_amount(charge)
        assert Fraction(entry["charged"]) == charge == Fraction("0.3")
    assert doc["note"].startswith("Confidence intervals cover the differential-privacy noise")


def test_query_csv_has_one_row_per_cell(cli: Cli, fed: Path) -> None:
    args = ("count", "--by", "service", "--epsilon", "0.5", "--format", "csv")
    run = cli("query", "--config", fed, *args)
    assert run.code == 0 and run.err == ""  # no progress lines mixed into data
    reader = csv.DictReader(run.out.splitlines())
    assert reader.fieldnames == [
        "service",
        "estimate",
        "ci_low",
        "ci_high",
        "half_width",
        "nodes",
        "method",
        "reliable",
        "unreliable_reasons",
        "query_id",
        "question",
        "cost_per_node",
        "definition",
        "nodes_covered",
    ]
    rows = list(reader)
    assert [r["service"] for r in rows] == list(SERVICES)
    for row in rows:
        assert float(row["ci_low"]) <= float(row["estimate"]) <= float(row["ci_high"])
        assert row["nodes"] == "3" and row["method"]
        assert (row["cost_per_node"], row["definition"]) == ("0.5", "pure")
        assert row["nodes_covered"] == ";".join(NAMES)


def test_query_histogram_csv_has_a_bin_column(cli: Cli, fed: Path) -> None:
    run = cli(
        "query",
        "--config",
        fed,
        "histogram",
        "sessions",
        "--bins",
        "0,5,10,60",
        "--epsilon",
        "0.5",
        "--format",
        "csv",
    )
    assert run.code == 0
    rows = list(csv.DictReader(run.out.splitlines()))
    assert len(rows) == 3 and all(r["bin"] for r in rows)


def test_query_negative_bounds_are_read_as_a_value(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    args = ("mean", "circumstances_change", "--bounds", "-4,4", "--epsilon", "0.5")
    run = cli("query", "--config", fed, *args, "--format", "json")
    assert run.code == 0
    doc = run.json()
    assert doc["query"]["bounds"] is not None
    assert -4 <= doc["cells"][0]["estimate"] <= 4


def test_query_format_defaults_to_the_federation_files(cli: Cli, fed: Path) -> None:
    raw = yaml.safe_load(fed.read_text(encoding="utf-8"))
    raw["defaults"] = {"format": "json"}
    fed.write_text(yaml.safe_dump(raw), encoding="utf-8")
    run = cli("query", "--config", fed, "count", "--epsilon", "0.5")
    assert run.code == 0 and run.json()["released"] is True


def test_query_plot_writes_a_png(cli: Cli, fed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    args = ("count", "--by", "service", "--epsilon", "0.5", "--plot", out)
    run = cli("query", "--config", fed, *args, "--quiet")
    assert run.code == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert f"plot written to {out}" in run.err


@pytest.mark.parametrize("name", OUTCOME_QUERIES)
def test_query_file_runs_every_example_query(
    cli: Cli, fed: Path, nodes: list[LiveNode], name: str
) -> None:
    run = cli("query", "--config", fed, "--file", OUTCOMES, "--name", name, "--format", "json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["released"] is True and doc["coverage"]["total"] == 3
    assert [n["charged"] for n in doc["nodes"]] == ["0.5", "0.5", "0.5"]
    assert doc["cells"]
    assert ledgers(nodes) == [(Fraction(1, 2), 1)] * 3


def test_query_file_cost_is_overridden_by_the_command_line(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    args = ("--file", OUTCOMES, "--name", OUTCOME_QUERIES[0], "--epsilon", "0.25")
    run = cli("query", "--config", fed, *args, "--format", "json")
    assert run.code == 0
    assert [n["charged"] for n in run.json()["nodes"]] == ["0.25"] * 3
    assert ledgers(nodes) == [(Fraction(1, 4), 1)] * 3


# ---------------------------------------------------------------- query: planning


def test_query_dry_run_spends_nothing_and_records_nothing(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    before = ledgers(nodes)
    run = cli("query", "--config", fed, "count", "--by", "service", "--epsilon", "0.5", "--dry-run")
    assert run.code == 0
    rows = table_rows(run.out.split("\n\n")[0])
    assert list(rows) == list(NAMES)
    for name in NAMES:
        assert rows[name][1:3] == ["0.5", "100"]
        assert rows[name][-1] == "ready"
    assert "expected 95% half-width of each combined cell: ±" in run.out
    assert "dry run: nothing was sent for answering and nothing was spent." in run.out
    assert ledgers(nodes) == before
    assert mirror_questions(fed) == 0


def test_query_target_ci_chooses_and_prints_a_cost(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    run = cli("query", "--config", fed, "count", "--target-ci", "50", "--format", "json")
    assert run.code == 0
    match = re.search(
        r"chose epsilon=([0-9.]+) per node for a 95% half-width of at most 50", run.err
    )
    assert match, run.err
    chosen = match.group(1)
    assert 0 < Fraction(chosen) <= 2
    doc = run.json()
    assert doc["query"]["cost"] == {"epsilon": chosen}
    assert doc["cells"][0]["half_width"] <= 50
    # Each node charges its OpenDP privacy map's value: at most the requested cost.
    for node, entry in zip(nodes, doc["nodes"], strict=True):
        assert entry["charged"] == format_amount(node.budget().lifetime_spent)
        assert (
            Fraction(chosen) - Fraction(1, 10**9) < Fraction(entry["charged"]) <= Fraction(chosen)
        )
    assert [n for _, n in ledgers(nodes)] == [1, 1, 1]


def test_query_target_ci_with_dry_run_spends_nothing(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    before = ledgers(nodes)
    run = cli("query", "--config", fed, "count", "--target-ci", "50", "--dry-run")
    assert run.code == 0
    match = re.search(r"chose epsilon=([0-9.]+) per node", run.err)
    assert match, run.err
    rows = table_rows(run.out.split("\n\n")[0])
    assert [rows[n][1] for n in NAMES] == [match.group(1)] * 3
    width = re.search(r"expected 95% half-width of each combined cell: ±([0-9.]+)", run.out)
    assert width and float(width.group(1)) <= 50
    assert ledgers(nodes) == before
    assert mirror_questions(fed) == 0


# ---------------------------------------------------------------- query: partial answers


def test_query_partial_answer_says_2_of_3(cli: Cli, fed: Path, nodes: list[LiveNode]) -> None:
    stop(nodes[2])
    run = cli("query", "--config", fed, "count", "--epsilon", "0.5")
    assert run.code == 0
    assert "coverage: 2 of 3 nodes (ngo-a, ngo-b)" in run.out
    assert "did not answer (not included above):" in run.out
    assert re.search(r"ngo-c: unreachable — unreachable", run.out)
    assert "ngo-a epsilon 0.5, ngo-b epsilon 0.5, ngo-c nothing" in run.out
    assert ledgers(nodes) == [(Fraction(1, 2), 1), (Fraction(1, 2), 1), (Fraction(0), 0)]


def test_query_require_all_with_a_stopped_node_releases_nothing(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    stop(nodes[2])
    before = ledgers(nodes)
    run = cli(
        "query", "--config", fed, "count", "--by", "service", "--epsilon", "0.5", "--require-all"
    )
    assert run.code == 3
    assert "Nothing was released" in run.out and "--require-all" in run.out
    assert "ngo-c: unreachable" in run.out
    assert "ngo-a nothing, ngo-b nothing, ngo-c nothing" in run.out
    assert "estimate" not in run.out
    assert ledgers(nodes) == before


def test_query_require_all_json_has_no_cells_and_no_plot(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path
) -> None:
    stop(nodes[0])
    before = ledgers(nodes)
    out = tmp_path / "out.png"
    args = ("count", "--epsilon", "0.5", "--require-all", "--plot", out)
    run = cli("query", "--config", fed, *args, "--format", "json")
    assert run.code == 3
    doc = run.json()
    assert doc["released"] is False and doc["cells"] == []
    assert doc["coverage"] == {"answered": [], "total": 3}
    assert [n["status"] for n in doc["nodes"]] == ["unreachable", "skipped", "skipped"]
    assert all(n["charged"] is None for n in doc["nodes"])
    assert not out.exists()
    assert ledgers(nodes) == before


def test_query_require_all_releases_when_every_node_answers(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    run = cli("query", "--config", fed, "count", "--epsilon", "0.5", "--require-all")
    assert run.code == 0 and "coverage: 3 of 3 nodes" in run.out


def test_query_id_reuse_charges_no_node_again(cli: Cli, fed: Path, nodes: list[LiveNode]) -> None:
    args = ("count", "--by", "service", "--epsilon", "0.5", "--format", "json")
    first = cli("query", "--config", fed, *args, "--query-id", "retry-me-1")
    assert first.code == 0
    after_first = ledgers(nodes)
    assert after_first == [(Fraction(1, 2), 1)] * 3
    again = cli("query", "--config", fed, *args, "--query-id", "retry-me-1")
    assert again.code == 0
    doc = again.json()
    assert doc["query_id"] == "retry-me-1"
    assert [n["status"] for n in doc["nodes"]] == ["replayed"] * 3
    assert [c["estimate"] for c in doc["cells"]] == [c["estimate"] for c in first.json()["cells"]]
    assert ledgers(nodes) == after_first
    budget = cli("budget", "--config", fed, "--format", "json").json()
    assert [(e["lifetime_spent"], e["mirror_spent"]) for e in budget["nodes"]] == [
        ("0.5", "0.5")
    ] * 3


def test_query_nodes_option_asks_only_those(cli: Cli, fed: Path, nodes: list[LiveNode]) -> None:
    run = cli("query", "--config", fed, "count", "--epsilon", "0.5", "--nodes", "ngo-a,ngo-c")
    assert run.code == 0
    assert "coverage: 2 of 2 nodes (ngo-a, ngo-c)" in run.out
    assert "ngo-b" not in run.out
    assert ledgers(nodes) == [(Fraction(1, 2), 1), (Fraction(0), 0), (Fraction(1, 2), 1)]


# ---------------------------------------------------------------- query: errors


BAD_QUERY_FILE = "version: 1\nqueries:\n  q:\n    kind: count\n    epsilon: 0.5\n    colour: red\n"

USAGE_ERRORS = {
    "unknown-node": (
        ["count", "--epsilon", "0.5", "--nodes", "ngo-a,ngo-z"],
        "unknown node 'ngo-z'",
    ),
    "unreadable-where": (
        ["count", "--epsilon", "0.5", "--where", "region>>auckland"],
        "cannot read condition 'region>>auckland'",
    ),
    "where-unknown-column": (
        ["count", "--epsilon", "0.5", "--where", "colour=red"],
        "unknown column 'colour'",
    ),
    "unknown-kind": (["median", "--epsilon", "0.5"], "unknown query kind 'median'"),
    "no-kind": (["--epsilon", "0.5"], "name a query kind"),
    "epsilon-and-rho": (
        ["count", "--epsilon", "0.5", "--rho", "0.1"],
        "give exactly one of --epsilon (pure DP) or --rho (zCDP)",
    ),
    "no-cost": (["count"], "give exactly one of --epsilon"),
    "target-ci-on-mean": (
        ["mean", "sessions", "--target-ci", "1"],
        "--target-ci needs a count, count_clients, sum or histogram",
    ),
    "file-without-name": (["--file", str(OUTCOMES)], "--file and --name go together"),
    "name-without-file": (["--name", OUTCOME_QUERIES[0]], "--file and --name go together"),
    "name-not-in-file": (
        ["--file", str(OUTCOMES), "--name", "no_such_query"],
        "no query named 'no_such_query'; it has: " + ", ".join(OUTCOME_QUERIES),
    ),
    "missing-query-file": (["--file", "{tmp}/nope.yaml", "--name", "q"], "no such query file"),
}


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_query_usage_error_exits_2_and_spends_nothing(
    cli: Cli,
    fed: Path,
    nodes: list[LiveNode],
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    before = ledgers(nodes)
    run = cli("query", "--config", fed, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert run.code == 2
    assert message in run.error_line()
    assert ledgers(nodes) == before
    assert mirror_questions(fed) == 0


def test_query_malformed_query_file_exits_2_naming_the_key(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path
) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(BAD_QUERY_FILE, encoding="utf-8")
    before = ledgers(nodes)
    run = cli("query", "--config", fed, "--file", path, "--name", "q")
    assert run.code == 2
    assert run.err.startswith(f"error: {path}: invalid query file:")
    assert "query 'q', key 'colour': unknown key" in run.err and "Traceback" not in run.err
    assert ledgers(nodes) == before


def test_query_query_file_with_bad_yaml_exits_2_on_one_line(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path
) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text("version: 1\nqueries: [\n", encoding="utf-8")
    before = ledgers(nodes)
    run = cli("query", "--config", fed, "--file", path, "--name", "q")
    assert run.code == 2
    assert "not valid YAML" in run.error_line()
    assert ledgers(nodes) == before


def test_query_missing_federation_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    run = cli("query", "--config", path, "count", "--epsilon", "0.5")
    assert run.code == 2
    line = run.error_line()
    assert f"{path}: no such file" in line and "tiaki nodes add" in line
    assert not path.exists()


def test_query_malformed_federation_file_exits_2(
    cli: Cli, tmp_path: Path, nodes: list[LiveNode]
) -> None:
    path = tmp_path / "federation.yaml"
    text = f"analyst: ana\nnodes: [{{name: a, address: {nodes[0].address}}}\n"
    path.write_text(text, encoding="utf-8")
    before = ledgers(nodes)
    run = cli("query", "--config", path, "count", "--epsilon", "0.5")
    assert run.code == 2
    assert "Traceback" not in run.err
    assert run.err.startswith(f"error: {path}: line 3: not valid YAML")
    assert ledgers(nodes) == before


def test_query_malformed_federation_file_error_is_one_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("analyst: ana\nnodes: [\n", encoding="utf-8")
    run = cli("query", "--config", path, "count", "--epsilon", "0.5")
    assert run.code == 2
    assert "line 3" in run.error_line()


def test_query_unknown_group_by_column_is_refused_before_any_node_is_asked(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    # The coordinator checks --by against the nodes' published schemas: nothing is sent.
    run = cli("query", "--config", fed, "count", "--by", "colour", "--epsilon", "0.5")
    assert run.code == 2
    assert "no column 'colour' at any node" in run.error_line()
    assert ledgers(nodes) == [(Fraction(0), 0)] * 3
    assert mirror_questions(fed) == 0


def test_query_rho_against_pure_dp_nodes_is_refused(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    run = cli("query", "--config", fed, "count", "--rho", "0.1", "--format", "json")
    assert run.code == 3
    doc = run.json()
    assert doc["cells"] == []
    for entry in doc["nodes"]:
        assert entry["status"] == "refused" and entry["charged"] is None
        assert "give the cost as epsilon" in entry["reason"]
    assert ledgers(nodes) == [(Fraction(0), 0)] * 3


def test_query_exits_4_when_no_node_is_reachable(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    for node in nodes:
        stop(node)
    run = cli("query", "--config", fed, "count", "--epsilon", "0.5")
    assert run.code == 4
    assert "no node could be reached" in run.error_line()
    assert ledgers(nodes) == [(Fraction(0), 0)] * 3


def test_query_with_an_empty_federation_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("analyst: ana\n", encoding="utf-8")
    run = cli("query", "--config", path, "count", "--epsilon", "0.5")
    assert run.code == 2
    assert "no nodes yet" in run.error_line()


# ---------------------------------------------------------------- budget


def mixed_run(cli: Cli, fed_file: Path, nodes: list[LiveNode]) -> None:
    """A success, two refusals, then a partial answer with one node stopped."""
    cfg = ("--config", fed_file, "--quiet")
    assert cli("query", *cfg, "count", "--by", "region", "--epsilon", "0.3").code == 0
    assert cli("query", *cfg, "count", "--by", "region", "--rho", "0.3").code == 3  # pure DP
    assert cli("query", *cfg, "count", "--epsilon", "5").code == 3  # above per_query_max
    stop(nodes[1])
    assert cli("query", *cfg, "count_clients", "--epsilon", "0.2").code == 0


def test_budget_table_after_a_mixed_run(cli: Cli, fed: Path, nodes: list[LiveNode]) -> None:
    mixed_run(cli, fed, nodes)
    run = cli("budget", "--config", fed)
    assert run.code == 0
    rows = table_rows(run.out)
    assert rows["ngo-a"] == ["ngo-a", "lifetime", "0.5", "99.5", "0.5", "0.5", "agrees"]
    assert rows["ngo-c"] == ["ngo-c", "lifetime", "0.5", "99.5", "0.5", "0.5", "agrees"]
    assert rows["ngo-b"][:3] == ["ngo-b", "unreachable", "0.3"]  # the mirror's figure


def test_budget_json_after_a_mixed_run(cli: Cli, fed: Path, nodes: list[LiveNode]) -> None:
    mixed_run(cli, fed, nodes)
    run = cli("budget", "--config", fed, "--format", "json")
    assert run.code == 0
    entries = {e["node"]: e for e in run.json()["nodes"]}
    assert list(entries) == list(NAMES)
    for name in ("ngo-a", "ngo-c"):
        entry = entries[name]
        assert entry["reachable"] is True and entry["agrees"] is True
        assert entry["finding"] is None and entry["definition"] == "pure"
        node = nodes[NAMES.index(name)]
        spent = node.budget().lifetime_spent
        assert spent == Fraction("0.5")  # 0.3 + 0.2, exactly as asked
        assert entry["lifetime_spent"] == entry["mirror_spent"] == format_amount(spent)
        assert entry["available"] == format_amount(100 - spent)
    down = entries["ngo-b"]
    assert down["reachable"] is False
    assert down["mirror_spent"] == format_amount(nodes[1].budget().lifetime_spent)
    assert set(down) == {"node", "reachable", "mirror_spent", "error"} and down["error"]


def test_budget_exits_4_when_no_node_is_reachable(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    for node in nodes:
        stop(node)
    run = cli("budget", "--config", fed, "--format", "json")
    assert run.code == 4
    assert [e["reachable"] for e in run.json()["nodes"]] == [False] * 3


def test_budget_missing_federation_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    run = cli("budget", "--config", tmp_path / "nowhere.yaml")
    assert run.code == 2 and "no such file" in run.error_line()
