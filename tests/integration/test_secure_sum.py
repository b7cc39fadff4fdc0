"""Secure sums over real gRPC servers with mutual TLS: five NGOs, one noise, one answer.

Each node is a real server on a free port with its own SQLite record store,
privacy ledger and session file; the coordinator is the product's own
(:func:`coordinator.secure_question.ask_secure`) over :class:`NodeClient`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.config import load_federation
from coordinator.fanout import Federation
from coordinator.mirror import MirrorLedger
from coordinator.results import NodeStatus
from coordinator.secure_question import SecureQuestionError, ask_secure, plan_secure
from node import engine
from node.config import load_config
from node.exports import node_signing_key
from node.synth import write_csv
from tests.conftest import FederationPki
from tests.integration.conftest import LiveNode, status_code, write_federation
from tiaki.budget import PrivacyDefinition
from tiaki.errors import PolicyViolationError, SecureAggregationError
from tiaki.ledger_export import parse_export
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.secagg.session import KeyAdvert, MaskedInput, SealedShares, SessionParameters
from tiaki.secure_records import SecureRevealRecord

N = 5
NAMES = tuple(f"ngo-{i}" for i in range(N))
COST = PrivacyCost(PrivacyDefinition.ZCDP, Fraction(1, 2))
BY_REGION = Query(QueryKind.COUNT, COST, group_by=("region",))


def zcdp_policy(secure: dict[str, Any] | None) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "privacy_definition": "zcdp",
        "budget": {"limit": "50", "period": "none"},
        "per_query_max": "5",
    }
    if secure is not None:
        policy["secure_aggregation"] = secure
    return policy


@pytest.fixture(scope="module")
def region_csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("secure-data")
    paths = []
    for i, name in enumerate(NAMES):
        path = root / f"{name}.csv"
        write_csv(path, 200 + 50 * i, 11 + i)
        paths.append(path)
    return paths


def start_federation(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    csvs: Sequence[Path],
    *,
    names: Sequence[str] = NAMES,
    secure_for: Callable[[str], bool] = lambda name: True,
    colluders: int = 0,
    worst_case_cap: Callable[[str], str] = lambda name: "50",
) -> list[LiveNode]:
    """Nodes that pin each other: keys made first, then every policy lists the others."""
    paths = [make_node_config(node_id=name, policy=zcdp_policy(None)) for name in names]
    keys = {
        name: node_signing_key(load_config(path))[0].public_text
        for name, path in zip(names, paths, strict=True)
    }
    nodes = []
    for name, path, csv in zip(names, paths, csvs, strict=True):
        secure = None
        if secure_for(name):
            secure = {
                "peers": [
                    {"node_id": other, "signing_key": key}
                    for other, key in keys.items()
                    if other != name
                ],
                "min_cohort": 3,
                "colluders": colluders,
                "worst_case": {"per_query": worst_case_cap(name), "lifetime": "1000"},
            }
        # The same directory, so the key made above is the one the node serves with.
        nodes.append(start_node(with_policy(path, zcdp_policy(secure)), csv))
    return nodes


def with_policy(path: Path, policy: dict[str, Any]) -> Path:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["policy"].update(policy)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def exact_totals(nodes: Sequence[LiveNode], query: Query) -> list[int]:
    """Σ over nodes of each cell's exact aggregate, from each node's own records."""
    total = None
    for node in nodes:
        service = node.running.service
        plan = engine.plan(query, service.config.schema, service.config.policy)
        (agg,) = engine.evaluate(plan, service.datasets.current, service.config.schema)
        total = agg.values if total is None else total + agg.values
    assert total is not None
    return [int(v) for v in total]


@pytest.fixture
def five(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    region_csvs: list[Path],
) -> list[LiveNode]:
    return start_federation(make_node_config, start_node, region_csvs)


@pytest.fixture
def fed_file(tmp_path: Path, five: list[LiveNode], pki: FederationPki) -> Path:
    return write_federation(tmp_path / "federation.yaml", five, pki)


def test_a_secure_count_by_region_is_one_noisy_total_charged_at_every_node(
    five: list[LiveNode], fed_file: Path
) -> None:
    config = load_federation(fed_file)
    exact = exact_totals(five, BY_REGION)
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        answer = ask_secure(federation, BY_REGION, analyst="ana", mirror=mirror)
    assert answer.released and answer.secure is not None
    assert answer.secure.summed == N and answer.secure.size == N
    assert len(answer.cells) == len(exact)
    for cell, truth in zip(answer.cells, exact, strict=True):
        # One noise of about the central scale: well within five half-widths.
        assert abs(cell.estimate - truth) < 5 * cell.half_width, (cell, truth)
        assert cell.nodes == N and "secure sum" in cell.method
    # Every node charged exactly the requested cost, once, with a worst case beside it.
    for node in five:
        entries = [e for e in node.running.service.ledger.entries() if e.kind == "count"]
        assert len(entries) == 1
        (entry,) = entries
        assert entry.charge == COST.amount
        assert entry.worst_case is not None and entry.privacy_map is not None
        assert entry.worst_case > entry.privacy_map
        assert entry.secure_session is not None
        assert entry.secure_session.session_id == answer.secure.session_id
        aggregate, worst = answer.secure.charges[node.config.node_id]
        assert (aggregate, worst) == (entry.privacy_map, entry.worst_case)
    # The roster and parameters every node recorded are the same.
    sessions = {
        (s.roster_hash, s.size, s.threshold, s.colluders, s.honest, s.share_scales)
        for node in five
        for s in [_session(node)]
    }
    assert len(sessions) == 1
    # Each member chained what it revealed: every survivor's self-mask share, nothing else.
    everyone = tuple(range(1, N + 1))
    for node in five:
        (reveal,) = reveals(node)
        assert reveal.session_id == answer.secure.session_id
        assert reveal.survivors == everyone and reveal.self_mask_shares == everyone
        assert reveal.mask_key_shares == ()
    # The mirror records the charge at each node, and no per-node answer.
    with MirrorLedger(config.ledger) as mirror:
        (question,) = mirror.questions()
        assert {o.node: o.charged for o in question.outcomes} == {n: COST.amount for n in NAMES}
        stored = mirror.stored_question(answer.query_id)
        # The total (under a name no node can have) and the session; no node's answer.
        assert stored is not None and set(stored.answers) == {"secure sum"}
        assert stored.secure_session is not None
        assert answer.secure.session_id in stored.secure_session


def reveals(node: LiveNode) -> list[SecureRevealRecord]:
    """The node's ``secure_reveal`` entries, read from its own signed export."""
    export = parse_export(node.running.service.export_ledger(0), node.config.node_id)
    return [
        SecureRevealRecord.from_body(e.body) for e in export.entries if e.type == "secure_reveal"
    ]


def _session(node: LiveNode) -> Any:
    (entry,) = [e for e in node.running.service.ledger.entries() if e.secure_session]
    return entry.secure_session


def test_the_secure_total_is_narrower_than_adding_five_nodes_noise(
    five: list[LiveNode], fed_file: Path
) -> None:
    config = load_federation(fed_file)
    with Federation(config) as federation:
        plan = plan_secure(federation, BY_REGION)
        per_node = [m.plan.components[0].accuracy_95 for m in plan.members]
    (secure_half,) = plan.half_widths()
    added = math.sqrt(sum(a * a for a in per_node))
    # N noises of the per-node scale against one of about the central scale.
    assert secure_half < added / 1.5, (secure_half, added)
    assert plan.threshold == N - 1 and plan.dropouts == 1 and plan.honest == N - 1


class DroppingLink:
    """A real node's client that stops the node's server before sending its masked input."""

    def __init__(self, node: LiveNode, client: Any) -> None:
        self.node = node
        self.client = client

    def advertise(self, params: SessionParameters) -> KeyAdvert:
        result: KeyAdvert = self.client.advertise(params)
        return result

    def share_keys(self, params: SessionParameters, adverts: Sequence[KeyAdvert]) -> Any:
        return self.client.share_keys(params, adverts)

    def masked_input(self, params: SessionParameters, sealed: Sequence[SealedShares]) -> Any:
        self.node.running.stop(grace=0)  # the node goes away mid-session
        result: MaskedInput = self.client.masked_input(params, sealed)
        return result  # pragma: no cover - the call fails


def test_a_node_that_dies_mid_session_drops_out_and_the_rest_release(
    five: list[LiveNode], fed_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_federation(fed_file)
    victim = five[2]
    from coordinator.secure_sum import run_session as real_run

    def run_with_a_death(params: SessionParameters, links: Any) -> Any:
        index = next(m.index for m in params.members if m.node_id == victim.config.node_id)
        links = dict(links)
        links[index] = DroppingLink(victim, links[index])
        return real_run(params, links)

    monkeypatch.setattr("coordinator.secure_question.run_session", run_with_a_death)
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        answer = ask_secure(federation, BY_REGION, analyst="ana", mirror=mirror)
    assert answer.released and answer.secure is not None
    assert answer.secure.summed == N - 1
    survivors = [n for n in five if n is not victim]
    exact = exact_totals(survivors, BY_REGION)
    for cell, truth in zip(answer.cells, exact, strict=True):
        assert abs(cell.estimate - truth) < 5 * cell.half_width
    # The victim charged nothing: it never computed its input.
    assert not [e for e in victim.running.service.ledger.entries() if e.secure_session]
    # The others revealed its mask-key shares (it shared keys, then sent nothing), and
    # the self-mask shares of the four survivors only.
    index = sorted(n.config.node_id for n in five).index(victim.config.node_id) + 1
    for node in survivors:
        (reveal,) = reveals(node)
        assert reveal.mask_key_shares == (index,)
        assert index not in reveal.self_mask_shares and len(reveal.self_mask_shares) == N - 1
    outcome = {o.node: o for o in answer.outcomes}[victim.config.node_id]
    assert outcome.charged is None and "dropped out" in outcome.reason
    assert outcome.status is NodeStatus.UNREACHABLE


def test_a_node_without_a_secure_policy_is_left_out_and_refuses_if_asked(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    region_csvs: list[Path],
    tmp_path: Path,
    pki: FederationPki,
) -> None:
    nodes = start_federation(
        make_node_config, start_node, region_csvs, secure_for=lambda name: name != "ngo-4"
    )
    config = load_federation(write_federation(tmp_path / "f.yaml", nodes, pki))
    with Federation(config) as federation:
        plan = plan_secure(federation, BY_REGION)
        assert [m.name for m in plan.members] == list(NAMES[:4])
        assert "no secure_aggregation" in plan.excluded["ngo-4"][1]
        params = _params(plan, BY_REGION)
        with pytest.raises(PolicyViolationError) as refused:
            federation.clients["ngo-4"].advertise(params)
        assert status_code(refused.value).name == "PERMISSION_DENIED"
    assert not (nodes[4].config.paths.secure_sessions).exists()


def _params(plan: Any, query: Query) -> SessionParameters:
    import time

    from coordinator.secure_sum import new_session
    from tiaki.secagg.session import Member

    return new_session(
        "q-secure-1",
        query,
        [Member(i, m.info.node_id, m.info.signing_key) for i, m in enumerate(plan.members, 1)],
        threshold=plan.threshold,
        colluders=plan.colluders,
        scale_factors=plan.scale_factors,
        share_scales=plan.share_scales,
        not_after=int(time.time() + 60),
    )


def test_a_roster_with_an_unpinned_member_is_refused_over_the_wire(
    five: list[LiveNode], fed_file: Path, tmp_path: Path
) -> None:
    from tiaki.secagg.session import Member
    from tiaki.signing import create_signing_key

    config = load_federation(fed_file)
    with Federation(config) as federation:
        plan = plan_secure(federation, BY_REGION)
        params = _params(plan, BY_REGION)
        stranger = create_signing_key(tmp_path / "stranger.key").public_text
        members = list(params.members)
        members[-1] = Member(members[-1].index, members[-1].node_id, stranger)
        forged = SessionParameters(**{**params.__dict__, "members": tuple(members)})
        with pytest.raises(SecureAggregationError) as refused:
            federation.clients[NAMES[0]].advertise(forged)
        assert status_code(refused.value).name == "FAILED_PRECONDITION"
        assert "not pinned" in refused.value.message
    for node in five:
        assert node.budget().lifetime_spent == 0


def test_a_pure_dp_question_or_too_few_members_is_refused_before_anything_is_sent(
    five: list[LiveNode], fed_file: Path
) -> None:
    config = load_federation(fed_file)
    pure = Query(QueryKind.COUNT, PrivacyCost(PrivacyDefinition.PURE, Fraction(1)))
    with Federation(config) as federation, pytest.raises(SecureQuestionError, match="zCDP"):
        plan_secure(federation, pure)
    # Each node wants 3 members at least: two cannot make a session.
    with (
        Federation(config, NAMES[:2]) as two,
        pytest.raises(SecureQuestionError, match="at least 3 members"),
    ):
        plan_secure(two, BY_REGION)
    for node in five:
        assert node.budget().lifetime_spent == 0


def test_tiaki_query_secure_mean_and_proportion_and_dry_run(
    five: list[LiveNode], fed_file: Path, cli: Any
) -> None:
    listed = cli("nodes", "--config", fed_file)
    assert listed.code == 0 and listed.out.count("yes: 3+ members") == N, listed.out
    dry = cli("query", "count", "--by", "region", "--rho", "0.5", "--secure", "--dry-run",
              "--config", fed_file)  # fmt: skip
    assert dry.code == 0, dry.err
    assert "secure sum of 5 members" in dry.out and "nothing was spent" in dry.out
    for node in five:
        assert node.budget().lifetime_spent == 0

    ran = cli("query", "mean", "sessions", "--rho", "0.5", "--secure", "--format", "json",
              "--config", fed_file)  # fmt: skip
    assert ran.code == 0, ran.err
    doc = ran.json()
    assert doc["secure"]["summed"] == N and doc["released"] is True
    (cell,) = doc["cells"]
    # The exact pooled mean of the bounded records, from each node's own aggregates.
    mean = Query(QueryKind.MEAN, COST, column="sessions")
    shifted, count = 0.0, 0
    for node in five:
        service = node.running.service
        plan = engine.plan(mean, service.config.schema, service.config.policy)
        s, c = engine.evaluate(plan, service.datasets.current, service.config.schema)
        spec = plan.numeric
        assert spec is not None
        shifted += int(s.values[0]) / (2 * spec.factor)
        count += int(c.values[0])
        midpoint = (spec.lower_int + spec.upper_int) / (2 * spec.factor)
    truth = midpoint + shifted / count
    assert abs(cell["estimate"] - truth) < max(5 * cell["half_width"], 1e-9), (cell, truth)
    assert cell["ci95"][0] <= cell["estimate"] <= cell["ci95"][1]
    assert set(doc["secure"]["charges"]) == set(NAMES)

    table = cli("query", "proportion", "--where", "service=youth", "--condition",
                "gender=female", "--rho", "0.5", "--secure", "--config", fed_file)  # fmt: skip
    assert table.code == 0, table.err
    assert "asked as a secure sum" in table.out and "worst case" in table.out
    for node in five:
        assert node.budget().lifetime_spent == 2 * COST.amount

    # Shown again from the mirror, asking no node: the same cells and session.
    shown = cli("show", doc["query_id"], "--format", "json", "--config", fed_file)
    assert shown.code == 0, shown.err
    again = shown.json()
    assert again["cells"] == doc["cells"] and again["secure"] == doc["secure"]
    for node in five:
        assert node.budget().lifetime_spent == 2 * COST.amount


def test_a_node_whose_worst_case_cap_the_session_would_break_is_left_out_first(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    region_csvs: list[Path],
    tmp_path: Path,
    pki: FederationPki,
) -> None:
    # A share alone costs about h·ρ = 3 × 0.5 here; ngo-0 allows at most 1.
    nodes = start_federation(
        make_node_config,
        start_node,
        region_csvs,
        worst_case_cap=lambda name: "1" if name == "ngo-0" else "50",
    )
    config = load_federation(write_federation(tmp_path / "f.yaml", nodes, pki))
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        plan = plan_secure(federation, BY_REGION)
        assert [m.name for m in plan.members] == list(NAMES[1:])
        assert "worst case would be about" in plan.excluded["ngo-0"][1]
        for m in plan.members:
            assert plan.worst_case(m) <= 50
        answer = ask_secure(federation, BY_REGION, analyst="ana", mirror=mirror)
    assert answer.released and answer.secure is not None and answer.secure.summed == 4
    # The planner's bound holds: each member's recorded worst case is at most it.
    for node in nodes[1:]:
        (entry,) = [e for e in node.running.service.ledger.entries() if e.secure_session]
        member = next(m for m in plan.members if m.name == node.config.node_id)
        assert entry.worst_case is not None and entry.worst_case <= plan.worst_case(member)
        assert entry.worst_case > plan.worst_case(member) * Fraction(9, 10)
    assert nodes[0].budget().lifetime_spent == 0


def test_differencing_two_rosters_costs_both_and_meets_fresh_noise(
    five: list[LiveNode], fed_file: Path
) -> None:
    """The same question over all five and then over four: both charged, new noise each time."""
    config = load_federation(fed_file)
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        everyone = ask_secure(federation, BY_REGION, analyst="ana", mirror=mirror)
    with Federation(config, NAMES[:4]) as four, MirrorLedger(config.ledger) as mirror:
        fewer = ask_secure(four, BY_REGION, analyst="ana", mirror=mirror)
    assert everyone.released and fewer.released
    assert everyone.secure is not None and fewer.secure is not None
    assert everyone.secure.session_id != fewer.secure.session_id
    for node in five[:4]:
        assert node.budget().lifetime_spent == 2 * COST.amount  # each release paid for
    assert five[4].budget().lifetime_spent == COST.amount
    # The difference is the fifth node's records plus two independent noises, never its
    # records alone: each release drew its own shares.
    exact_fifth = exact_totals(five[4:], BY_REGION)
    residual = [
        a.estimate - b.estimate - x
        for a, b, x in zip(everyone.cells, fewer.cells, exact_fifth, strict=True)
    ]
    assert any(abs(r) >= 1 for r in residual), residual


def test_the_federation_file_can_make_secure_sums_the_default(
    five: list[LiveNode], fed_file: Path, cli: Any
) -> None:
    raw = yaml.safe_load(fed_file.read_text(encoding="utf-8"))
    raw["defaults"] = {**raw.get("defaults", {}), "secure": True}
    raw["secure_aggregation"] = {"dropouts": 0}
    fed_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    secure = cli("query", "count", "--rho", "0.5", "--format", "json", "--config", fed_file)
    assert secure.code == 0, secure.err
    doc = secure.json()
    # Dropouts 0 from the file: every member's input is needed.
    assert doc["secure"]["threshold"] == N and doc["secure"]["summed"] == N
    per_node = cli("query", "count", "--rho", "0.5", "--per-node", "--format", "json",
                   "--config", fed_file)  # fmt: skip
    assert per_node.code == 0, per_node.err
    assert "secure" not in per_node.json() and len(per_node.json()["nodes"]) == N
    both = cli("query", "count", "--rho", "0.5", "--require-all", "--config", fed_file)
    assert both.code != 0 and "--require-all is for per-node answers" in both.error_line()
    for node in five:
        assert node.budget().lifetime_spent == 2 * COST.amount
