"""Secure sums are as accurate as one central release: 2,000 releases at N = 20, 2 dropped.

Twenty NGOs hold 100,000 synthetic records between them, split by client
(each client's records at one node), each in its own record store. The
session is chosen by the coordinator's own planner (``choose_session``) from
the nodes' own plans; each node judges and draws its noise share as it does
for a masked input (``check_share``, then OpenDP via ``release_share``); the
total of the 18 survivors of each release (two nodes drop out, at random) is
decoded and combined into cells with 95% intervals by the coordinator's own
code (``secure_total``, ``combine_secure``). Masking is left out: it cancels
exactly modulo 2^64 (``test_secagg_primitives``, ``test_secure_sum_protocol``),
so it cannot change an answer.

The comparison is one central release of the same survivors' pooled records
at the same cost, drawn by OpenDP (``node.mechanisms.release``). OpenDP takes
no seed, so each check has a tolerance of six standard errors; the dropouts
come from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import yaml

from coordinator.combine import combine_secure
from coordinator.secure_question import SecureMember, SecurePlan, choose_session, secure_total
from coordinator.secure_sum import SecureSum, SummedComponent, new_session
from node import answering, engine
from node.config import load_config
from node.exports import node_signing_key
from node.importer import import_csv
from node.mechanisms import NoiseShare, check_share, release, release_share
from node.service import NodeService, open_service
from node.synth import write_csv
from tests.conftest import write_node_config
from tiaki.budget import PrivacyDefinition
from tiaki.distributed_noise import sum_variance
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.secagg.session import CellKey, Member

pytestmark = pytest.mark.statistical

N = 20
DROPPED = 2
RELEASES = 2_000
CLIENTS = 2_200  # per node: over 100,000 records in all
COST = PrivacyCost(PrivacyDefinition.ZCDP, Fraction(1, 2))
QUERIES = {
    "count": Query(QueryKind.COUNT, COST, group_by=("region",)),
    "sum": Query(QueryKind.SUM, COST, column="sessions", group_by=("region",)),
    "mean": Query(QueryKind.MEAN, COST, column="sessions", group_by=("region",)),
}
SIGMAS = 6


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeService]]:
    root = tmp_path_factory.mktemp("accuracy")
    paths = [
        write_node_config(
            root / f"ngo-{i:02d}",
            node_id=f"ngo-{i:02d}",
            policy={"privacy_definition": "zcdp", "budget": {"limit": "10", "period": "none"}},
        )
        for i in range(N)
    ]
    keys = {}
    for path in paths:
        config = load_config(path)
        keys[config.node_id] = node_signing_key(config)[0].public_text
    services = []
    for i, path in enumerate(paths):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        raw["policy"]["secure_aggregation"] = {
            "peers": [
                {"node_id": n, "signing_key": k} for n, k in keys.items() if n != raw["node_id"]
            ],
            "min_cohort": N,
            "colluders": 0,
            "worst_case": {"per_query": "20", "lifetime": "100"},
        }
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        config = load_config(path)
        csv = root / f"{config.node_id}.csv"
        write_csv(csv, CLIENTS, 500 + i)  # a client's records all at this node
        assert import_csv(config, csv).committed
        services.append(open_service(config))
    yield services
    for service in services:
        service.close()


@dataclass(frozen=True)
class Releases:
    """Per query: each release's combined cells, the survivors' truth, and central's estimate."""

    estimates: np.ndarray  # (releases, cells)
    low: np.ndarray
    high: np.ndarray
    truth: np.ndarray
    central: np.ndarray
    counts: np.ndarray  # the survivors' exact records per cell (a mean's denominator)


def _shares(service: NodeService, query: Query, plan: SecurePlan) -> tuple[NoiseShare, ...]:
    """What the node's contribution judges for itself (node.secure_service.contribute)."""
    node_plan = engine.plan(query, service.config.schema, service.config.policy)
    budgets = answering.shares(query.cost.amount, len(node_plan.components))
    params_cohort = _params(query, plan).cohort
    return tuple(
        check_share(float(s.l2), b, params_cohort, g, sigma, node_plan.n_cells)
        for s, b, g, sigma in zip(
            node_plan.sensitivities, budgets, plan.scale_factors, plan.share_scales, strict=True
        )
    )


def _params(query: Query, plan: SecurePlan) -> Any:
    return new_session(
        "q-accuracy",
        query,
        [Member(i, m.info.node_id, m.info.signing_key) for i, m in enumerate(plan.members, 1)],
        threshold=plan.threshold,
        colluders=plan.colluders,
        scale_factors=plan.scale_factors,
        share_scales=plan.share_scales,
        not_after=2_000_000_000,
    )


def _column_units(name: str, plan: engine.QueryPlan) -> float:
    spec = plan.numeric
    if spec is None:
        return 1.0
    return {"sum": float(spec.factor), "shifted_sum": 2.0 * spec.factor}.get(name, 1.0)


def release_many(services: list[NodeService], kind: str) -> Releases:
    query = QUERIES[kind]
    members = [
        SecureMember(s.config.node_id, s.info(), s.plan("coordinator", "", query)) for s in services
    ]
    plan = choose_session(query, members, {}, dropouts=DROPPED, colluders=0)
    assert plan.threshold == N - DROPPED and plan.honest == N - DROPPED
    params = _params(query, plan)
    node_plans = [engine.plan(query, s.config.schema, s.config.policy) for s in services]
    exact = [
        engine.evaluate(p, s.datasets.current, s.config.schema)
        for p, s in zip(node_plans, services, strict=True)
    ]
    cells = node_plans[0].n_cells
    comps = len(node_plans[0].components)
    # exact[i][j].values: node i, component j; noisy[j]: (N, RELEASES, cells)
    noisy = []
    for j in range(comps):
        per_node = []
        for i, service in enumerate(services):
            share = _shares(service, query, plan)[j]
            drawn = release_share(np.tile(exact[i][j].values, RELEASES), share)
            per_node.append(drawn.reshape(RELEASES, cells))
        noisy.append(np.stack(per_node))
    rng = np.random.default_rng(20261204)
    alive = np.ones((N, RELEASES), dtype=bool)
    for r in range(RELEASES):
        alive[rng.choice(N, DROPPED, replace=False), r] = False
    exact_by = [np.stack([exact[i][j].values for i in range(N)]) for j in range(comps)]
    survivors_exact = [np.einsum("nr,nc->rc", alive, e) for e in exact_by]  # (R, cells)
    totals = [np.einsum("nr,nrc->rc", alive, v) for v in noisy]  # γ·x + noise, summed

    keys = tuple(
        CellKey(node_plans[0].group_labels[c // len(node_plans[0].bin_labels)], "")
        for c in range(cells)
    )
    survivors = tuple(range(1, N - DROPPED + 1))
    variance = [
        sum_variance([sigma] * len(survivors), g)
        for sigma, g in zip(plan.share_scales, plan.scale_factors, strict=True)
    ]
    est, lo, hi = (np.zeros((RELEASES, cells)) for _ in range(3))
    for r in range(RELEASES):
        summed = SecureSum(
            params=params,
            survivors=survivors,
            charged=survivors,
            dropped={},
            components=tuple(
                SummedComponent(name, totals[j][r].astype(np.float64) / g, variance[j])
                for j, (name, g) in enumerate(
                    zip(node_plans[0].components, plan.scale_factors, strict=True)
                )
            ),
            cells=keys,
            charges={},
        )
        combined = combine_secure(query, secure_total(query, plan, summed), len(survivors))
        est[r] = [c.estimate for c in combined]
        lo[r] = [c.ci_low for c in combined]
        hi[r] = [c.ci_high for c in combined]

    # One central release of the same survivors' pooled records, at the same cost.
    share_budget = answering.shares(query.cost.amount, comps)[0]
    central_parts = []
    for j in range(comps):
        l2 = float(node_plans[0].sensitivities[j].l2)
        pooled = release(survivors_exact[j].ravel(), l2, share_budget, PrivacyDefinition.ZCDP)
        central_parts.append(pooled.values.reshape(RELEASES, cells).astype(np.float64))
    first = node_plans[0]
    names = first.components
    units = [_column_units(n, first) for n in names]
    if kind == "mean":
        spec = first.numeric
        assert spec is not None
        mid = (spec.lower_int + spec.upper_int) / (2.0 * spec.factor)
        counts = survivors_exact[1].astype(np.float64)
        truth = mid + survivors_exact[0] / units[0] / np.maximum(counts, 1)
        central = np.clip(
            mid + central_parts[0] / units[0] / np.maximum(central_parts[1], 1),
            spec.lower,
            spec.upper,
        )
    else:
        counts = survivors_exact[0].astype(np.float64)
        truth = survivors_exact[0] / units[0]
        central = central_parts[0] / units[0]
    return Releases(est, lo, hi, truth, central, counts)


def _rmse(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate - truth) ** 2)))


@pytest.mark.parametrize("kind", ["count", "sum"])
def test_secure_counts_and_sums_match_central_and_their_intervals_cover(
    services: list[NodeService], kind: str
) -> None:
    assert sum(s.datasets.current.n_records for s in services) >= 100_000
    got = release_many(services, kind)
    n = got.truth.size  # 2,000 releases × 16 regions
    ratio = _rmse(got.estimates, got.truth) / _rmse(got.central, got.truth)
    # Two RMSEs of n normal errors each have a relative standard error of 1/√(2n).
    assert abs(ratio - 1.0) <= SIGMAS * math.sqrt(2) / math.sqrt(2 * n), ratio
    assert ratio <= 1.1
    covered = float(np.mean((got.low <= got.truth) & (got.truth <= got.high)))
    assert abs(covered - 0.95) <= SIGMAS * math.sqrt(0.95 * 0.05 / n), covered
    assert 0.94 <= covered <= 0.96


def test_a_secure_mean_matches_central_and_covers_where_the_denominator_is_large(
    services: list[NodeService],
) -> None:
    got = release_many(services, "mean")
    ratio = _rmse(got.estimates, got.truth) / _rmse(got.central, got.truth)
    assert ratio <= 1.1, ratio
    # The delta method's interval is for denominators far from zero: regions with
    # at least 1,000 records among the survivors (it is first-order; said in the docs).
    large = got.counts >= 1_000
    assert large.sum() >= 2 * RELEASES
    inside = (got.low <= got.truth) & (got.truth <= got.high)
    covered = float(np.mean(inside[large]))
    n = int(large.sum())
    assert abs(covered - 0.95) <= SIGMAS * math.sqrt(0.95 * 0.05 / n) + 0.005, covered
