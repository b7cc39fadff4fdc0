"""What a new analyst tripped over, fixed: real nodes over mTLS, the ``tiaki`` CLI in and
out of process, the nodes' own ledgers checked whenever something must cost nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from coordinator import output
from coordinator.client import NodeClient
from tests.conftest import Cli, FederationPki
from tests.integration.conftest import (
    NAMES,
    LiveNode,
    ledgers,
    mirror_questions,
    stop,
    write_federation,
)
from tiaki.budget import PrivacyDefinition

BIN = Path(sys.executable).parent


def _mirror_answers(fed: Path, query_id: str, cli: Cli) -> dict[str, Any]:
    shown = cli("show", query_id, "--config", fed, "--format", "json")
    assert shown.code == 0, shown.err
    doc: dict[str, Any] = shown.json()
    return doc


# ---------------------------------------------------------------- 1. nothing paid for is lost


def test_a_closed_pipe_loses_nothing_and_exits_quietly(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    # A real shell pipe: `tiaki query ... | head -1`, the reader leaving after one line.
    command = (
        f"{BIN / 'tiaki'} query --config {fed} count --by region --epsilon 0.5 "
        "--query-id piped-1 | head -1"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.startswith("count by region")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert "error" not in done.stderr.lower()
    assert done.returncode in (0, 141)  # as any Unix tool whose reader left
    spent = ledgers(nodes)
    assert spent == [(Fraction(1, 2), 1)] * 3
    # The answer the nodes paid for is there, whole, without asking again.
    for node in nodes:
        stop(node)
    doc = _mirror_answers(fed, "piped-1", cli)
    assert len(doc["cells"]) == 16 and doc["coverage"]["total"] == 3
    history = cli("history", "--config", fed, "--format", "json").json()
    assert [h["query_id"] for h in history] == ["piped-1"]
    assert history[0]["answered"] == list(NAMES)
    assert history[0]["cost_per_node"] == {"epsilon": "0.5"}
    assert history[0]["charged_total"] == "1.5"


def test_show_renders_exactly_what_query_printed_without_asking(
    cli: Cli, fed: Path, nodes: list[LiveNode], tmp_path: Path
) -> None:
    asked = cli(
        "query", "--config", fed, "mean", "sessions", "--by", "service", "--epsilon", "0.5",
        "--format", "json", "--query-id", "mean-1",
    )  # fmt: skip
    assert asked.code == 0
    before = ledgers(nodes)
    for node in nodes:
        stop(node)
    shown = _mirror_answers(fed, "mean-1", cli)
    original = asked.json()
    assert shown["cells"] == original["cells"]  # combined again, the same numbers
    assert [n["charged"] for n in shown["nodes"]] == [n["charged"] for n in original["nodes"]]
    assert ledgers(nodes) == before
    for fmt in ("table", "csv"):
        run = cli("show", "mean-1", "--config", fed, "--format", fmt)
        assert run.code == 0 and "mean of sessions" in run.out
    picture = tmp_path / "again.png"
    assert cli("show", "mean-1", "--config", fed, "--plot", picture).code == 0
    assert picture.read_bytes().startswith(b"\x89PNG")
    unknown = cli("show", "no-such-id", "--config", fed)
    assert unknown.code == 2 and "no question with id 'no-such-id'" in unknown.error_line()


def test_an_unwritable_plot_or_ctrl_c_loses_nothing(
    cli: Cli, fed: Path, nodes: list[LiveNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = cli(
        "query", "--config", fed, "count", "--epsilon", "0.5", "--query-id", "plot-1",
        "--plot", "/nonexistent/folder/plot.png",
    )  # fmt: skip
    assert run.code == 2
    assert "cannot write the plot" in run.err and "tiaki show plot-1" in run.err
    assert _mirror_answers(fed, "plot-1", cli)["coverage"]["answered"] == list(NAMES)

    def interrupted(answer: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("coordinator.cli.show.federated_table", interrupted)
    run = cli("query", "--config", fed, "count", "--epsilon", "0.5", "--query-id", "ctrl-c")
    assert run.code == 130 and "tiaki show ctrl-c" in run.err
    monkeypatch.undo()
    assert _mirror_answers(fed, "ctrl-c", cli)["coverage"]["answered"] == list(NAMES)
    assert ledgers(nodes) == [(Fraction(1), 2)] * 3


def test_history_refuses_a_nonsense_count(cli: Cli, fed: Path) -> None:
    run = cli("history", "--config", fed, "--last", "0")
    assert run.code == 2 and "--last takes a positive number" in run.error_line()
    assert cli("history", "--config", fed).out.startswith("no questions yet")


# ---------------------------------------------------------------- 2. re-asking is free


@pytest.fixture
def tight(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    csvs: list[Path],
    tmp_path: Path,
    pki: FederationPki,
    capsys: pytest.CaptureFixture[str],
) -> tuple[Path, list[LiveNode]]:
    """Two nodes with a budget of 1 and a per-query maximum of 0.6."""
    policy = {"budget": {"limit": "1", "period": "none"}, "per_query_max": "0.6"}
    members = [
        start_node(make_node_config(node_id=name, policy=policy), path)
        for name, path in zip(NAMES[:2], csvs, strict=False)
    ]
    path = write_federation(tmp_path / "tight.yaml", members, pki)
    capsys.readouterr()
    return path, members


def test_a_known_query_id_is_replayed_even_with_the_budget_nearly_gone(
    cli: Cli, tight: tuple[Path, list[LiveNode]]
) -> None:
    fed, members = tight
    assert cli("query", "--config", fed, "count", "--epsilon", "0.6", "--query-id", "x").code == 0
    assert cli("query", "--config", fed, "count_clients", "--epsilon", "0.3").code == 0
    # 0.1 left at each node: a new 0.6 question would be refused by the pre-flight...
    assert cli("query", "--config", fed, "sum", "sessions", "--epsilon", "0.6").code == 3
    before = ledgers(members)
    # ...but the answered id is the node's to replay, for free.
    table = cli("query", "--config", fed, "count", "--epsilon", "0.6", "--query-id", "x")
    assert table.code == 0, table.out
    assert "ngo-a replayed, no charge, ngo-b replayed, no charge" in table.out
    doc = cli(
        "query", "--config", fed, "count", "--epsilon", "0.6", "--query-id", "x",
        "--format", "json",
    ).json()  # fmt: skip
    assert [n["status"] for n in doc["nodes"]] == ["replayed", "replayed"]
    assert [n["charge"] for n in doc["nodes"]] == [output.REPLAYED_WORDS] * 2
    assert [n["charged_now"] for n in doc["nodes"]] == ["0", "0"]
    assert ledgers(members) == before


def test_plan_tells_only_its_own_caller_about_a_replay(
    tight: tuple[Path, list[LiveNode]],
) -> None:
    from tiaki.query import PrivacyCost, Query, QueryKind

    _, (node, _) = tight
    query = Query(QueryKind.COUNT, PrivacyCost.parse(node.config.policy.privacy_definition, "0.5"))
    with node.client("coordinator-a") as a, node.client("coordinator-b") as b:
        assert not a.plan(query, "mine").replay
        a.query(query, query_id="mine", analyst="a")
        assert a.plan(query, "mine").replay
        assert not b.plan(query, "mine").replay  # ids are scoped to the identity
        other = Query(QueryKind.COUNT_CLIENTS, query.cost)
        with pytest.raises(Exception, match="already used for a different query"):
            a.plan(other, "mine")


# ---------------------------------------------------------------- 3-5. outputs say what they mean


def test_a_proportion_names_its_condition_and_everything_else(
    cli: Cli, fed: Path, tmp_path: Path
) -> None:
    args = (
        "proportion", "--condition", "circumstances_change>=1", "--where", "service=budgeting",
        "--by", "region", "--epsilon", "0.5", "--query-id", "p-1",
    )  # fmt: skip
    table = cli("query", "--config", fed, *args)
    title = (
        "proportion with circumstances_change ≥ 1 by region where service = budgeting; "
        "epsilon 0.5 per node"
    )
    assert table.out.splitlines()[0] == title
    assert "Shares of clients" in table.out and "counted at each" in table.out
    doc = cli("show", "p-1", "--config", fed, "--format", "json").json()
    assert doc["title"] == title and doc["cost_per_node"] == {"epsilon": "0.5"}
    rows = cli("show", "p-1", "--config", fed, "--format", "csv").out.splitlines()
    assert all(title in row and "p-1" in row and "ngo-a;ngo-b;ngo-c" in row for row in rows[1:])


def test_counts_say_what_they_count(cli: Cli, fed: Path) -> None:
    records = cli("query", "--config", fed, "count", "--epsilon", "0.5").out
    assert "Counts records (service episodes) after each node kept at most k records" in records
    assert "(k = 4 at ngo-a, ngo-b, ngo-c)" in records  # the template's bound at every node
    clients = cli("query", "--config", fed, "count_clients", "--epsilon", "0.5", "--format", "json")
    assert "distinct clients at each node, summed over nodes" in clients.json()["counting"]


def test_cells_that_are_mostly_noise_are_flagged_everywhere(
    cli: Cli, fed: Path, tmp_path: Path
) -> None:
    # A mean over one small region at a tiny cost: the interval covers most of [-4, 4].
    args = (
        "mean", "circumstances_change", "--bounds", "-4,4", "--by", "region",
        "--where", "service=youth", "--epsilon", "0.01", "--query-id", "noisy",
    )  # fmt: skip
    table = cli("query", "--config", fed, *args)
    assert table.code == 0
    assert f"{output.UNRELIABLE_MARK} unreliable" in table.out
    doc = cli("show", "noisy", "--config", fed, "--format", "json").json()
    flagged = [c for c in doc["cells"] if not c["reliable"]]
    assert flagged, "a 0.01 mean by region must have cells that are mostly noise"
    for cell in flagged:
        low, high = cell["ci95"]
        reasons = " ".join(cell["unreliable_reasons"])
        wide = high - low > 0.5 * 8
        assert wide or "denominator" in reasons or "bound" in reasons
    for cell in doc["cells"]:
        if cell["reliable"]:
            low, high = cell["ci95"]
            assert high - low <= 0.5 * 8
    # A stricter threshold flags at least as many cells; the flag is post-processing only.
    strict = cli("show", "noisy", "--config", fed, "--format", "json", "--unreliable-share", "0.1")
    assert sum(not c["reliable"] for c in strict.json()["cells"]) >= len(flagged)
    assert [c["estimate"] for c in strict.json()["cells"]] == [c["estimate"] for c in doc["cells"]]
    bad = cli("show", "noisy", "--config", fed, "--unreliable-share", "2")
    assert bad.code == 2


# ---------------------------------------------------------------- 6. mistakes caught locally


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("count", "--by", "regoin"), "no column 'regoin' at any node; did you mean 'region'?"),
        (("count", "--where", "regoin=otago"), "did you mean 'region'?"),
        (("count", "--where", "region=otaga"), "no category 'otaga' at any node; did you mean"),
        (("count", "--by", "sessions"), "'sessions' is not categorical"),
        (("mean", "sessions", "--bounds", "0,100"), "reach outside 'sessions'"),
    ],
)
def test_schema_mistakes_are_refused_before_any_node_is_asked(
    cli: Cli, fed: Path, nodes: list[LiveNode], words: tuple[str, ...], expected: str
) -> None:
    run = cli("query", "--config", fed, *words, "--epsilon", "0.5")
    assert run.code == 2
    assert expected in run.error_line()
    assert ledgers(nodes) == [(Fraction(0), 0)] * 3
    assert mirror_questions(fed) == 0


def test_a_kind_no_node_allows_is_refused_locally_and_a_hopeless_dry_run_fails(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    csvs: list[Path],
    tmp_path: Path,
    pki: FederationPki,
    cli: Cli,
) -> None:
    policy = {"allowed_kinds": ["count", "count_clients"], "per_query_max": "0.5"}
    node = start_node(make_node_config(node_id="ngo-a", policy=policy), csvs[0])
    fed = write_federation(tmp_path / "f.yaml", [node], pki)
    run = cli("query", "--config", fed, "sum", "sessions", "--epsilon", "0.5")
    assert run.code == 2 and "sum questions are not allowed by node ngo-a" in run.error_line()
    dry = cli("query", "--config", fed, "count", "--epsilon", "0.9", "--dry-run")
    assert dry.code == 3 and "no node would answer" in dry.err
    assert node.budget().lifetime_spent == 0


# ---------------------------------------------------------------- 7. planning a mean


def test_dry_run_of_a_mean_gives_a_half_width_in_the_columns_units(cli: Cli, fed: Path) -> None:
    args = ("mean", "sessions", "--epsilon", "0.5", "--dry-run")
    guessed = cli("query", "--config", fed, *args)
    assert guessed.code == 0
    assert "in the column's units, for a denominator of 300 (a guess of 100 per node" in (
        guessed.out
    )
    stated = cli("query", "--config", fed, *args, "--expected-count", "3000")
    line = next(x for x in stated.out.splitlines() if x.startswith("expected 95% half-width"))
    width = float(line.split("±")[1].split()[0])
    guess = next(x for x in guessed.out.splitlines() if x.startswith("expected 95% half-width"))
    assert width == pytest.approx(float(guess.split("±")[1].split()[0]) / 10, rel=1e-3)
    assert "shifted_sum ±" in stated.out and "count ±" in stated.out  # components still shown
    bad = cli("query", "--config", fed, *args, "--expected-count", "0")
    assert bad.code == 2


def test_the_planned_mean_half_width_covers_what_a_release_gets(
    cli: Cli, fed: Path, nodes: list[LiveNode]
) -> None:
    # The planned figure is a worst case at the stated denominator: with the true
    # denominator (known here, from the nodes' own datasets), every released
    # cell's interval is at most that wide.
    total = sum(n.running.service.datasets.current.n_records for n in nodes)
    args = ("mean", "sessions", "--epsilon", "0.5")
    plan = cli("query", "--config", fed, *args, "--dry-run", "--expected-count", str(total))
    line = next(x for x in plan.out.splitlines() if x.startswith("expected 95% half-width"))
    planned = float(line.split("±")[1].split()[0])
    doc = cli("query", "--config", fed, *args, "--format", "json").json()
    assert doc["cells"][0]["half_width"] <= planned * 1.05


# ---------------------------------------------------------------- 8. failure reasons


def test_nodes_tells_apart_why_a_node_cannot_be_reached(
    cli: Cli,
    nodes: list[LiveNode],
    tmp_path: Path,
    pki: FederationPki,
) -> None:
    from tiaki import certs

    fed = write_federation(tmp_path / "f.yaml", nodes, pki)
    text = fed.read_text(encoding="utf-8")
    stop(nodes[0])  # refused: nothing listens
    # A node under a name its certificate does not carry.
    text = text.replace("name: ngo-b\n", "name: ngo-b\n  server_name: ngo-zzz\n", 1)
    fed.write_text(text, encoding="utf-8")
    run = cli("nodes", "--config", fed)
    assert "connection refused: nothing listens at that address" in flat(run.out)
    assert "does not carry the expected name" in flat(run.out)
    # Our certificate from a CA the nodes do not trust; theirs from one we do not.
    other = tmp_path / "other-ca"
    certs.create_ca(other, "another CA")
    cert, key = certs.issue_coordinator(other, tmp_path / "oc", "coordinator-a")
    ours = fed.read_text(encoding="utf-8")
    strange = ours.replace(str(pki.coordinator("coordinator-a")[0]), str(cert)).replace(
        str(pki.coordinator("coordinator-a")[1]), str(key)
    )
    fed.write_text(strange, encoding="utf-8")
    assert "does not accept our certificate" in flat(cli("nodes", "--config", fed).out)
    untrusting = ours.replace(str(pki.ca_cert), str(other / "ca.crt"))
    fed.write_text(untrusting, encoding="utf-8")
    run = cli("nodes", "--config", fed)
    assert "the node's certificate is not trusted" in flat(run.out)
    assert "…" not in run.out and "..." not in run.out  # whole reasons, wrapped
    assert max(len(line) for line in run.out.splitlines()) <= 200


def flat(text: str) -> str:
    """A wrapped table's text as one line: words separated by single spaces."""
    return " ".join(text.split())


def test_json_documents_are_valid_without_nan(cli: Cli, fed: Path) -> None:
    run = cli("query", "--config", fed, "histogram", "sessions", "--bins", "0,5,60",
              "--epsilon", "0.5", "--format", "json")  # fmt: skip
    json.loads(run.out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_a_client_without_plan_id_behaves_as_before(nodes: list[LiveNode]) -> None:
    from tiaki.query import PrivacyCost, Query, QueryKind

    with nodes[0].client() as client:
        assert isinstance(client, NodeClient)
        plan = client.plan(Query(QueryKind.COUNT, PrivacyCost.parse(PrivacyDefinition.PURE, "0.5")))
    assert not plan.replay and plan.charge == PrivacyCost(PrivacyDefinition.PURE, Fraction(1, 2))
