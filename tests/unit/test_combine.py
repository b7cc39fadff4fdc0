"""Combining noisy node answers: oracle tests on hand-built answers, and CI coverage."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.combine import (
    Z_95,
    combine,
    combine_outcomes,
    noise_variance,
    summed_noise_half_width,
)
from coordinator.results import NodeOutcome, NodeStatus
from tiaki.answer import Answer, Cell, Component
from tiaki.budget import PrivacyDefinition
from tiaki.query import Bounds, InSet, PrivacyCost, Query, QueryKind

DL, DG = "discrete_laplace", "discrete_gaussian"
COST = PrivacyCost(PrivacyDefinition.PURE, Fraction(1, 2))
COUNT = Query(QueryKind.COUNT, COST)
SUM = Query(QueryKind.SUM, COST, column="income")
MEAN = Query(QueryKind.MEAN, COST, column="age")
PROPORTION = Query(QueryKind.PROPORTION, COST, condition=(InSet("sex", ("1",)),))
HISTOGRAM = Query(QueryKind.HISTOGRAM, COST, column="age", bin_edges=(0, 50, 100), group_by=("r",))

CellSpec = tuple[tuple[str, ...], str, tuple[Component, ...]]


def comp(
    name: str, value: float, scale: float = 2.0, dist: str = DL, acc: float = 7.0
) -> Component:
    return Component(name, value, dist, scale, acc)


def answer(node: str, cells: Sequence[CellSpec]) -> Answer:
    return Answer(
        query_id="q",
        node_id=node,
        canonical_query="{}",
        group_by=(),
        cells=tuple(Cell(g, b, 0.0, 0.0, parts) for g, b, parts in cells),
        charged=COST,
        dataset_version="v",
        replayed=False,
        budget=None,
    )


def one(node: str, *parts: Component) -> tuple[str, Answer]:
    return node, answer(node, [((), "", parts)])


def dl_cumulants(scale: float) -> tuple[float, float]:
    """Variance and 4th cumulant of the discrete Laplace, summed from its pmf."""
    q = math.exp(-1.0 / scale)
    ks = range(1, int(60 * scale) + 60)
    # P(k) = (1 − q)/(1 + q)·q^|k|, symmetric: even moments are 2·Σ_{k>0}.
    m2 = 2 * math.fsum(k**2 * (1 - q) / (1 + q) * q**k for k in ks)
    m4 = 2 * math.fsum(k**4 * (1 - q) / (1 + q) * q**k for k in ks)
    return m2, m4 - 3 * m2 * m2


def z_cf(moments: list[tuple[float, float]]) -> float:
    """The Cornish–Fisher 97.5% quantile for the excess kurtosis of a sum."""
    var = sum(v for v, _ in moments)
    gamma2 = sum(k for _, k in moments) / var**2
    return Z_95 + (Z_95**3 - 3 * Z_95) * gamma2 / 24


# ------------------------------------------------------------ noise_variance


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5, 10.0, 47.0])
def test_discrete_laplace_variance_matches_its_pmf(scale: float) -> None:
    assert noise_variance(DL, scale) == pytest.approx(dl_cumulants(scale)[0], rel=1e-9)


@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.0])
def test_discrete_gaussian_variance_is_an_upper_bound(sigma: float) -> None:
    ks = np.arange(-200, 201, dtype=np.float64)
    w = np.exp(-(ks**2) / (2 * sigma**2))
    true_var = float((ks**2 * w).sum() / w.sum())
    # Below σ² (equal up to rounding once σ is a few units).
    assert noise_variance(DG, sigma) == sigma**2
    assert true_var <= sigma**2 * (1 + 1e-12)


def test_unknown_distribution_or_bad_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        noise_variance("laplace", 1.0)
    with pytest.raises(ValueError, match="finite"):
        noise_variance(DL, math.inf)


# ------------------------------------------------------------ oracle tests


def test_gaussian_counts_add_with_the_plain_normal_interval() -> None:
    answers = [one("a", comp("count", 100, 2.0, DG)), one("b", comp("count", 50, 3.0, DG))]
    (cell,) = combine(COUNT, answers)
    assert cell.estimate == 150 and abs(Z_95 - 1.96) < 1e-3
    assert cell.half_width == pytest.approx(Z_95 * math.sqrt(4.0 + 9.0))  # no excess kurtosis
    assert (cell.ci_low, cell.ci_high) == (150 - cell.half_width, 150 + cell.half_width)
    assert cell.nodes == 2 and cell.method.startswith("normal approximation")


def test_laplace_counts_widen_the_normal_interval_by_their_kurtosis() -> None:
    answers = [
        one("a", comp("count", 100, 2.0)),
        one("b", comp("count", 50, 3.0)),
        one("c", comp("count", 7, 4.0, DG)),
    ]
    (cell,) = combine(COUNT, answers)
    moments = [dl_cumulants(2.0), dl_cumulants(3.0), (16.0, 0.0)]
    var = sum(v for v, _ in moments)
    assert cell.estimate == 157 and 2.0 < z_cf(moments) < 2.1
    assert cell.half_width == pytest.approx(z_cf(moments) * math.sqrt(var), rel=1e-9)
    assert cell.nodes == 3 and "Cornish–Fisher" in cell.method
    # What a planner can predict from the nodes' planned noise is the same number.
    assert summed_noise_half_width([c for _, a in answers for c in a.cells[0].components]) == (
        cell.half_width
    )


def test_one_node_uses_opendp_accuracy() -> None:
    (cell,) = combine(COUNT, [one("a", comp("count", 12, 2.0, acc=6.5))])
    assert (cell.estimate, cell.half_width, cell.ci_low, cell.ci_high) == (12, 6.5, 5.5, 18.5)
    assert cell.method.startswith("exact") and cell.nodes == 1


def test_sums_add_with_a_variance_bound_valid_on_any_grid() -> None:
    answers = [one("a", comp("sum", 1500.5, 40.0)), one("b", comp("sum", -20.25, 10.0))]
    (cell,) = combine(SUM, answers)
    assert cell.estimate == 1480.25
    # Sums are rescaled from an integer grid: the continuous Laplace's 2·scale²
    # bounds the variance on any grid; its 4th cumulant is 12·scale⁴.
    moments = [(2 * 40.0**2, 12 * 40.0**4), (2 * 10.0**2, 12 * 10.0**4)]
    expected = z_cf(moments) * math.sqrt(2 * 40.0**2 + 2 * 10.0**2)
    assert cell.half_width == pytest.approx(expected, rel=1e-9)


def test_mean_is_a_ratio_of_sums_not_an_average_of_means() -> None:
    # Node a: 1000 clients, mean 10, midpoint 50. Node b: 10 clients, mean 190, midpoint 100.
    # Gaussian noise (no excess kurtosis), so the interval is exactly 1.96·sd.
    a = one("a", comp("shifted_sum", 10_000 - 50 * 1000, 30.0, DG), comp("count", 1000, 2.0, DG))
    b = one("b", comp("shifted_sum", 1_900 - 100 * 10, 60.0, DG), comp("count", 10, 3.0, DG))
    (cell,) = combine(MEAN, [a, b], {"a": 50.0, "b": 100.0})
    r = 11_900 / 1010
    assert cell.estimate == pytest.approx(r)  # the average of node means would be 100
    # The delta method written out as in the design: Var(ΣS) − 2R·Cov + R²·Var(ΣN).
    vt_a, vt_b, vn_a, vn_b = 30.0**2, 60.0**2, 2.0**2, 3.0**2
    var_s = vt_a + 50**2 * vn_a + vt_b + 100**2 * vn_b
    cov = 50 * vn_a + 100 * vn_b
    var_r = (var_s - 2 * r * cov + r * r * (vn_a + vn_b)) / 1010**2
    assert cell.half_width == pytest.approx(Z_95 * math.sqrt(var_r))
    assert cell.method.startswith("delta method") and "not clipped" in cell.method
    # The same answers with Laplace noise: heavier tails, a wider interval.
    lap = [
        (
            n,
            answer(
                n, [((), "", tuple(comp(c.name, c.value, c.scale) for c in x.cells[0].components))]
            ),
        )
        for n, x in (a, b)
    ]
    (wide,) = combine(MEAN, lap, {"a": 50.0, "b": 100.0})
    assert wide.estimate == cell.estimate and wide.half_width > cell.half_width


def test_mean_is_clipped_to_the_query_bounds() -> None:
    query = Query(QueryKind.MEAN, COST, column="age", bounds=Bounds(0, 100))
    a = one("a", comp("shifted_sum", 60.0 * 30, 3.0), comp("count", 30, 2.0))
    (cell,) = combine(query, [a], {"a": 50.0})
    assert type(cell.estimate) is float and cell.estimate == 100.0  # 110 before clipping
    assert cell.ci_high == 100.0 and cell.ci_low == 100.0 - cell.half_width > 0
    assert "clipped to the query's bounds" in cell.method


def test_mean_needs_every_midpoint() -> None:
    a = one("a", comp("shifted_sum", 0.0), comp("count", 5))
    with pytest.raises(ValueError, match=r"'a'.*midpoint"):
        combine(MEAN, [a])
    with pytest.raises(ValueError, match=r"'a'.*midpoint"):
        combine(MEAN, [a], {"b": 1.0})


def test_proportion_is_a_ratio_clipped_to_the_unit_interval() -> None:
    answers = [
        one("a", comp("numerator", 30, 2.0), comp("denominator", 100, 2.0)),
        one("b", comp("numerator", 45, 2.0), comp("denominator", 50, 2.0)),
    ]
    (cell,) = combine(PROPORTION, answers)
    v, k = dl_cumulants(2.0)
    assert cell.estimate == pytest.approx(0.5)  # not (0.3 + 0.9) / 2
    # Linearised numerator: Num − R·Den per node, independent noises.
    lin = [(v + 0.5**2 * v, k + 0.5**4 * k)] * 2
    expected = z_cf(lin) * math.sqrt(2 * (v + 0.25 * v)) / 150
    assert cell.half_width == pytest.approx(expected, rel=1e-9)
    (high,) = combine(PROPORTION, [one("a", comp("numerator", 12), comp("denominator", 10))])
    assert high.estimate == 1.0 and high.ci_high == 1.0 and 0 <= high.ci_low < 1
    (empty,) = combine(PROPORTION, [one("a", comp("numerator", 2), comp("denominator", -3))])
    assert empty.estimate == 1.0  # 2 / max(-3, 1), clipped


def test_histogram_cells_match_by_key_in_the_first_answers_order() -> None:
    keys = [(("x",), "[0, 50)"), (("x",), "[50, 100]"), (("y",), "[0, 50)"), (("y",), "[50, 100]")]
    a = answer("a", [(g, b, (comp("count", i),)) for i, (g, b) in enumerate(keys)])
    b = answer(
        "b", [(g, b, (comp("count", 10 * i),)) for i, (g, b) in reversed(list(enumerate(keys)))]
    )
    cells = combine(HISTOGRAM, [("a", a), ("b", b)])
    assert [(c.group, c.bin) for c in cells] == keys
    assert [c.estimate for c in cells] == [0, 11, 22, 33]


def test_mismatched_cells_name_the_node() -> None:
    a = answer("a", [(("x",), "", (comp("count", 1),)), (("y",), "", (comp("count", 2),))])
    b = answer("b", [(("x",), "", (comp("count", 1),)), (("z",), "", (comp("count", 2),))])
    with pytest.raises(ValueError, match="'b'"):
        combine(COUNT, [("a", a), ("b", b)])
    dup = answer("c", [(("x",), "", (comp("count", 1),))] * 2)
    with pytest.raises(ValueError, match="'c'"):
        combine(COUNT, [("c", dup)])


@pytest.mark.parametrize(
    "bad",
    [
        comp("clients", 3.0),
        comp("count", math.nan),
        comp("count", 3.0, math.inf),
        comp("count", 3.0, 0.0),
        comp("count", 3.0, 2.0, "laplace"),
    ],
)
def test_missing_or_non_finite_components_name_the_node(bad: Component) -> None:
    with pytest.raises(ValueError, match="'b'"):
        combine(COUNT, [one("a", comp("count", 1.0)), one("b", bad)])


def test_combine_outcomes_uses_answered_nodes_only() -> None:
    ok = NodeOutcome("a", NodeStatus.ANSWERED, answer=one("a", comp("count", 5, acc=3.0))[1])
    again = NodeOutcome("b", NodeStatus.REPLAYED, answer=one("b", comp("count", 6))[1])
    refused = NodeOutcome("c", NodeStatus.REFUSED, reason="budget")
    (cell,) = combine_outcomes(COUNT, [ok, refused, again], None)
    assert cell.estimate == 11 and cell.nodes == 2
    assert combine_outcomes(COUNT, [refused], None) == ()
    with pytest.raises(ValueError, match="'d'"):
        combine_outcomes(COUNT, [NodeOutcome("d", NodeStatus.ANSWERED)], None)


# ------------------------------------------------------------ coverage

# Plain numpy samplers, fine here: they test our interval formulas, not a
# privacy mechanism (nodes use OpenDP's). 4000 trials; if true coverage is
# 0.95 the empirical rate has sd sqrt(0.95·0.05/4000) ≈ 0.0034, so [0.93, 0.97]
# is about ±6 sd. (Over 8 other seeds these tests gave 0.943 to 0.964; a plain
# 1.96·sd interval covers only about 0.937 to 0.946 when Laplace noise of one
# node dominates, which is why combine corrects for kurtosis.)
TRIALS = 4000
Sampler = Callable[[float, int], npt.NDArray[np.float64]]


def samplers(rng: np.random.Generator) -> dict[str, Sampler]:
    def laplace(scale: float, n: int) -> npt.NDArray[np.float64]:
        p = -math.expm1(-1.0 / scale)  # G ~ Geometric(p) from 0; G1 − G2 is discrete Laplace
        return (rng.geometric(p, n) - rng.geometric(p, n)).astype(np.float64)

    def gaussian(scale: float, n: int) -> npt.NDArray[np.float64]:
        return np.rint(rng.normal(0.0, scale, n))

    return {DL: laplace, DG: gaussian}


def coverage(
    query: Query,
    truth: float,
    trials: list[list[tuple[str, Answer]]],
    mids: dict[str, float] | None = None,
) -> float:
    hits = 0
    for answers in trials:
        (cell,) = combine(query, answers, mids)
        hits += cell.ci_low <= truth <= cell.ci_high
    return hits / len(trials)


@pytest.mark.parametrize("dist", [DL, DG])
def test_count_interval_covers_95_percent(dist: str) -> None:
    draw = samplers(np.random.default_rng(11))[dist]
    counts, scales = [120, 800, 45, 3000], [2.0, 5.0, 3.0, 4.0]
    noise = [draw(s, TRIALS) for s in scales]
    trials = [
        [
            one(f"n{i}", comp("count", c + noise[i][t], s, dist))
            for i, (c, s) in enumerate(zip(counts, scales, strict=True))
        ]
        for t in range(TRIALS)
    ]
    assert 0.93 <= coverage(COUNT, sum(counts), trials) <= 0.97


@pytest.mark.parametrize("dist", [DL, DG])
def test_mean_interval_covers_95_percent(dist: str) -> None:
    rng = np.random.default_rng(12)
    draw = samplers(rng)[dist]
    # Integer columns with bounds (0, 100), (0, 120), (20, 80): midpoints 50, 60, 50.
    mids = {"a": 50.0, "b": 60.0, "c": 50.0}
    n = {"a": 1800, "b": 240, "c": 650}
    s = {"a": 1800 * 31.5, "b": 240 * 88.0, "c": 650 * 47.25}
    width = {"a": 100, "b": 120, "c": 60}
    eps = {"a": 0.5, "b": 0.2, "c": 1.0}  # each component's share
    trials: list[list[tuple[str, Answer]]] = [[] for _ in range(TRIALS)]
    for node in mids:
        # The node releases T on a doubled integer grid (sensitivity = width)
        # and reports value and scale in column units, i.e. halved.
        t_scale = width[node] / eps[node] if dist == DL else width[node] / math.sqrt(2 * eps[node])
        n_scale = 1 / eps[node] if dist == DL else 1 / math.sqrt(2 * eps[node])
        t_noise, n_noise = draw(t_scale, TRIALS) / 2, draw(n_scale, TRIALS)
        t_exact = s[node] - mids[node] * n[node]
        for t in range(TRIALS):
            trials[t].append(
                one(
                    node,
                    comp("shifted_sum", t_exact + t_noise[t], t_scale / 2, dist),
                    comp("count", n[node] + n_noise[t], n_scale, dist),
                )
            )
    truth = sum(s.values()) / sum(n.values())
    assert 0.93 <= coverage(MEAN, truth, trials, mids) <= 0.97


@pytest.mark.parametrize("dist", [DL, DG])
def test_proportion_interval_covers_95_percent(dist: str) -> None:
    draw = samplers(np.random.default_rng(13))[dist]
    dens, nums = [200, 1500, 600, 950, 330], [20, 750, 480, 285, 300]
    scales = [2.0, 10.0, 4.0, 5.0, 2.5]
    noise = [(draw(sc, TRIALS), draw(sc, TRIALS)) for sc in scales]
    trials = [
        [
            one(
                f"n{i}",
                comp("numerator", nums[i] + nn[t], sc, dist),
                comp("denominator", dens[i] + dn[t], sc, dist),
            )
            for i, (sc, (nn, dn)) in enumerate(zip(scales, noise, strict=True))
        ]
        for t in range(TRIALS)
    ]
    assert 0.93 <= coverage(PROPORTION, sum(nums) / sum(dens), trials) <= 0.97
