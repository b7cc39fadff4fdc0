"""One noise shared among the nodes of a secure sum: γ, τ, both charges, and the sum's accuracy.

The τ table is KLS21's formula evaluated here independently (in decimal
arithmetic at 50 digits) and compared with the published research figures;
the charges are compared with OpenDP's own maps, built in this file. The
statistical checks draw from OpenDP, which takes no seed: each states its
tolerance in standard errors.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import opendp.prelude as dp
import pytest

from node.mechanisms import NoiseShare, calibrate, check_share, plan_share, release_share
from tiaki.budget import PrivacyDefinition
from tiaki.distributed_noise import (
    MIN_SHARE_SCALE,
    TAU_ALLOWANCE,
    Cohort,
    NoiseShareError,
    check_scale_factor,
    error_ratio,
    session_share_scale,
    smallest_scale_factor,
    sum_variance,
    tau,
    tau_term,
)


def reference_tau(sigma: float, n: int) -> Decimal:
    """KLS21's τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²k/(k+1)), in 50-digit decimals."""
    getcontext().prec = 50
    pi = Decimal("3.14159265358979323846264338327950288419716939937510")
    s2 = Decimal(sigma) ** 2
    return 10 * sum(((-2 * pi * pi * s2 * k / (k + 1)).exp() for k in range(1, n)), Decimal(0))


# The research notes' table (two significant figures): τ by share scale, for 18 shares
# (and 198 and 998 at scale 1/2).
PUBLISHED_TAU = [
    (0.5, 18, 3.2),
    (0.5, 198, 17.0),
    (0.5, 998, 75.0),
    (1.0, 18, 5.4e-4),
    (1.5, 18, 2.3e-9),
    (2.0, 18, 7.2e-17),
    (3.0, 18, 2.7e-38),
]


@pytest.mark.parametrize(("sigma", "n", "published"), PUBLISHED_TAU)
def test_tau_reproduces_the_table_and_bounds_the_exact_value(
    sigma: float, n: int, published: float
) -> None:
    exact = reference_tau(sigma, n)
    assert abs(float(exact) - published) <= 0.05 * published  # two significant figures
    bound = tau(sigma, n)
    assert Fraction(exact) <= bound <= Fraction(exact) * (1 + Fraction(1, 2**28))


def test_one_share_has_no_tau_and_the_bound_needs_a_scale_of_a_half() -> None:
    assert tau(0.7, 1) == 0
    with pytest.raises(NoiseShareError, match="at least 1/2"):
        tau(0.49, 5)


def test_the_tau_term_is_rounded_up_to_thirty_places() -> None:
    term = tau_term(2.0, 18, 10)
    assert term >= tau(2.0, 18) * 10
    assert term.denominator == 10**30 or (term * 10**30).denominator == 1
    assert tau_term(3.0, 18, 10) == Fraction(1, 10**30)  # 2.7e-37 rounds up to 1e-30


def test_a_cohort_counts_only_the_honest_and_refuses_what_cannot_be_vouched_for() -> None:
    cohort = Cohort(size=20, dropouts=2, colluders=1)
    assert (cohort.honest, cohort.least_survivors) == (17, 18)
    for size, dropouts, colluders, words in [
        (1, 0, 0, "at least 2 nodes"),
        (5, 5, 0, "from 0 to 4"),
        (5, -1, 0, "from 0 to 4"),
        (5, 0, -1, "0 or more"),
        (5, 2, 3, "no honest node"),
    ]:
        with pytest.raises(NoiseShareError, match=words):
            Cohort(size, dropouts, colluders)


@pytest.mark.parametrize(("sensitivity", "rho", "honest"), [(1.0, "0.5", 18), (3.0, "0.01", 5)])
def test_the_scale_factor_is_the_least_power_of_two_that_gives_shares_a_scale_of_two(
    sensitivity: float, rho: str, honest: int
) -> None:
    gamma = smallest_scale_factor(sensitivity, Fraction(rho), honest)

    def share(g: int) -> float:
        return g * sensitivity / math.sqrt(2 * float(Fraction(rho)) * honest)

    assert share(gamma) >= MIN_SHARE_SCALE
    assert gamma == 1 or share(gamma // 2) < MIN_SHARE_SCALE * (1 + 2**-20)
    check_scale_factor(gamma)


def test_scale_factors_are_powers_of_two_within_range() -> None:
    for bad in (0, 3, 6, 2**31, -4):
        with pytest.raises(NoiseShareError, match="power of two"):
            check_scale_factor(bad)
    with pytest.raises(NoiseShareError, match="too small to share"):
        smallest_scale_factor(1e-6, Fraction(10**6), 10**5)


def opendp_rho(scale: float, sensitivity: float) -> Fraction:
    measurement = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"), scale=scale
    )
    return Fraction(measurement.map(sensitivity))


@pytest.mark.parametrize(
    ("sensitivity", "rho", "cohort", "length"),
    [
        (1.0, "0.5", Cohort(20, 2, 0), 10),
        (2.0, "0.05", Cohort(20, 2, 1), 80),
        (1.4142135623730951, "0.125", Cohort(5, 1, 0), 3),
        (256.0, "1", Cohort(50, 5, 2), 1),
    ],
)
def test_both_charges_are_opendp_maps_and_the_sum_costs_at_most_the_budget(
    sensitivity: float, rho: str, cohort: Cohort, length: int
) -> None:
    budget = Fraction(rho)
    gamma = smallest_scale_factor(sensitivity, budget, cohort.honest)
    share = plan_share(sensitivity, budget, cohort, gamma, length)
    scaled = sensitivity * gamma
    assert share.share_scale >= MIN_SHARE_SCALE and share.honest == cohort.honest
    assert share.worst_case == opendp_rho(share.share_scale, scaled)
    honest_sum = opendp_rho(math.sqrt(cohort.honest) * share.share_scale, scaled)
    map_part = share.aggregate - share.tau_term
    # OpenDP's map at a scale a hair under √h·σᵢ: never less than at √h·σᵢ, hardly more.
    assert honest_sum <= map_part <= honest_sum * (1 + Fraction(1, 10**12))
    assert share.tau_term == tau_term(share.share_scale, cohort.honest, length)
    assert share.aggregate <= budget
    assert share.aggregate >= budget * (1 - Fraction(1, 2**30))  # nothing wasted
    # The trade-off a board accepts: the node's worst case is about h times the aggregate.
    assert abs(share.worst_case / share.aggregate - cohort.honest) <= Fraction(1, 10**6)


def test_unscaled_parameters_are_refused() -> None:
    # KLS21's own counterexample: ρ = 0.5, Δ = 1, 18 honest shares unscaled have σᵢ ≈ 0.24.
    with pytest.raises(NoiseShareError, match="would not be Gaussian"):
        plan_share(1.0, Fraction(1, 2), Cohort(20, 2, 0), 1, 10)
    with pytest.raises(NoiseShareError, match="power of two"):
        plan_share(1.0, Fraction(1, 2), Cohort(20, 2, 0), 12, 10)


def test_a_tau_term_that_is_not_negligible_is_refused() -> None:
    # At σᵢ just over 2, τ ≈ 7e-17 per cell: a billion cells make it 7e-8, far above ρ·2^-40.
    cohort = Cohort(20, 2, 0)
    gamma = smallest_scale_factor(1.0, Fraction(1, 2), cohort.honest)
    share = plan_share(1.0, Fraction(1, 2), cohort, gamma, 1)
    assert share.tau_term <= Fraction(1, 2) * TAU_ALLOWANCE
    scale = plan_share(1.0, Fraction(1, 10), cohort, 4, 1).share_scale
    assert 2 <= scale < 2.2  # close enough to 2 that τ matters for a huge vector
    with pytest.raises(NoiseShareError, match="not negligible"):
        plan_share(1.0, Fraction(1, 10), cohort, 4, 10**9)


def test_one_session_scale_serves_every_member_whatever_its_sensitivity() -> None:
    # Two nodes whose clients may have different numbers of records: Δ = 1 and Δ = 3.
    cohort, budget = Cohort(20, 2, 1), Fraction(1, 4)
    centrals = [calibrate(PrivacyDefinition.ZCDP, delta, budget) for delta in (1.0, 3.0)]
    gamma = smallest_scale_factor(3.0, budget, cohort.honest)
    scale = session_share_scale(max(centrals), cohort.honest, gamma)
    small = check_share(1.0, budget, cohort, gamma, scale, 10)
    large = check_share(3.0, budget, cohort, gamma, scale, 10)
    assert small.aggregate < large.aggregate <= budget
    assert large.aggregate >= budget * (1 - Fraction(1, 2**26))  # the session's scale is tight
    assert small.share_scale == large.share_scale == scale
    # A scale chosen for the smaller sensitivity is too little noise for the larger one.
    too_small = session_share_scale(min(centrals), cohort.honest, 4 * gamma)
    assert too_small >= 2
    with pytest.raises(NoiseShareError, match="too small for this node's sensitivity"):
        check_share(3.0, budget, cohort, 4 * gamma, too_small, 10)


SIGMAS = 6  # each statistical check fails a correct implementation with p ≈ 2e-9


def shares_summed(share: NoiseShare, nodes: int, cells: int) -> np.ndarray:
    zeros = np.zeros(cells, dtype=np.int64)
    return sum((release_share(zeros, share) for _ in range(nodes)), np.zeros(cells, np.int64))


@pytest.mark.statistical
def test_scaled_shares_sum_to_the_central_noise_and_unscaled_ones_do_not() -> None:
    cohort, budget, cells = Cohort(20, 2, 0), Fraction(1, 2), 20_000
    gamma = smallest_scale_factor(1.0, budget, cohort.honest)
    share = plan_share(1.0, budget, cohort, gamma, cells)
    decoded = shares_summed(share, cohort.honest, cells) / gamma
    central_variance = 1.0 / (2 * float(budget))  # Δ²/(2ρ) at Δ = 1: one central release
    sample = float(np.var(decoded))
    # The sample variance of n normal draws has a relative standard error of √(2/n).
    assert abs(sample / central_variance - 1) <= SIGMAS * math.sqrt(2 / cells)
    unscaled = NoiseShare(1, 1 / (2 * math.sqrt(cohort.honest)), cohort.honest, *(Fraction(1),) * 3)
    assert float(np.var(shares_summed(unscaled, cohort.honest, 2_000))) < 0.1  # not 1


@pytest.mark.statistical
def test_a_secure_sum_is_within_ten_percent_of_central_and_its_intervals_cover() -> None:
    """20,000 cells, each a release of 20 nodes (2 may drop): RMSE ÷ central and coverage."""
    cohort, budget, cells = Cohort(20, 2, 0), Fraction(1, 2), 20_000
    gamma = smallest_scale_factor(1.0, budget, cohort.honest)
    share = plan_share(1.0, budget, cohort, gamma, cells)
    central = float(math.sqrt(1.0 / (2 * float(budget))))
    for survivors in (cohort.size, cohort.least_survivors):
        errors = shares_summed(share, survivors, cells) / gamma
        rmse = float(np.sqrt(np.mean(errors**2)))
        expected = error_ratio(survivors, cohort.honest)
        assert expected <= 1.06
        # RMSE of n draws: relative standard error about 1/√(2n).
        assert abs(rmse / central - expected) <= SIGMAS * expected / math.sqrt(2 * cells)
        assert rmse / central <= 1.1
        half = 1.959963984540054 * math.sqrt(sum_variance([share.share_scale] * survivors, gamma))
        covered = float(np.mean(np.abs(errors) <= half))
        assert 0.94 <= covered <= 0.96  # 0.95 ± 6.5 standard errors at 20,000 cells
