"""The only module that calls OpenDP to release anything.

The engine hands over an exact integer aggregate vector and its sensitivity
(derived from the privacy unit in :mod:`node.sensitivity`, the module beside
this one); this module builds the matching OpenDP measurement, finds the
smallest noise scale whose privacy map fits the share of the budget, releases,
and reports the charge as OpenDP's own privacy map states it, converted
exactly to a Fraction.

Pure ε-DP uses the discrete Laplace mechanism over the L1 distance; ρ-zCDP
uses the discrete Gaussian over the L2 distance. Both sample exactly with
OpenDP's CSPRNG; nothing here draws randomness of its own.

For a secure sum, a node adds only a share of one discrete Gaussian
(:func:`plan_share`, :func:`release_share`); the public arithmetic of the
shares (γ, τ, who counts as honest) is in :mod:`tiaki.distributed_noise`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp

from tiaki.budget import PrivacyDefinition, display_amount
from tiaki.distributed_noise import (
    MIN_SHARE_SCALE,
    TAU_ALLOWANCE,
    Cohort,
    NoiseShareError,
    check_scale_factor,
    tau_term,
)

# The single place tiaki opts into OpenDP's contrib features (a test checks
# that nothing else is enabled).
ENABLED_FEATURES = ("contrib",)
for _feature in ENABLED_FEATURES:
    dp.enable_features(_feature)

ALPHA_95 = 0.05
_MAX_SCALE_STEPS = 64
_EXACT_GAUSSIAN_ACCURACY_MAX_SCALE = 1000.0


@dataclass(frozen=True)
class NoisyVector:
    """A released vector with the noise that protects it and what it cost."""

    values: npt.NDArray[np.int64]
    distribution: str
    scale: float
    accuracy_95: float
    charge: Fraction


def distribution_name(definition: PrivacyDefinition) -> str:
    return "discrete_laplace" if definition is PrivacyDefinition.PURE else "discrete_gaussian"


@lru_cache(maxsize=512)
def _measurement(definition: PrivacyDefinition, scale: float) -> Any:
    # Built once per (definition, scale) and reused: building costs about a
    # millisecond, calling it much less. The domain is unsized, so one
    # measurement serves every answer length.
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    if definition is PrivacyDefinition.PURE:
        return dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=scale)
    return dp.m.make_gaussian(domain, dp.l2_distance(T="f64"), scale=scale)


def _d_in(definition: PrivacyDefinition, sensitivity: float) -> int | float:
    if definition is PrivacyDefinition.PURE:
        if not float(sensitivity).is_integer():
            raise ValueError(f"an integer L1 sensitivity is required, got {sensitivity}")
        return int(sensitivity)
    return float(sensitivity)


@lru_cache(maxsize=4096)
def privacy_cost(definition: PrivacyDefinition, scale: float, sensitivity: float) -> Fraction:
    """OpenDP's privacy map at this sensitivity, as an exact Fraction.

    Cached: the map is a pure function of its arguments, and asking OpenDP
    costs a few hundred microseconds on every release otherwise.
    """
    cost = _measurement(definition, scale).map(_d_in(definition, sensitivity))
    return Fraction(cost)


@lru_cache(maxsize=4096)
def calibrate(definition: PrivacyDefinition, sensitivity: float, budget: Fraction) -> float:
    """The smallest scale we find whose OpenDP privacy map at ``sensitivity`` is within budget.

    The first guess inverts the textbook formula; OpenDP's map (which rounds
    conservatively) is then the judge, and the scale is nudged up until the
    map fits. The formula only chooses; the map decides what is charged.
    """
    if sensitivity <= 0 or budget <= 0:
        raise ValueError("sensitivity and budget must be positive")
    # Floats only pick a candidate scale for OpenDP; the comparison that
    # decides, and the charge, are exact Fractions of OpenDP's own map.
    if definition is PrivacyDefinition.PURE:
        scale = sensitivity / float(budget)
    else:
        scale = sensitivity / math.sqrt(2.0 * float(budget))
    for _ in range(_MAX_SCALE_STEPS):
        if privacy_cost(definition, scale, sensitivity) <= budget:
            return scale
        scale = math.nextafter(scale, math.inf) * (1.0 + 2.0**-40)
    raise ArithmeticError("no noise scale fits the privacy budget")  # pragma: no cover


@lru_cache(maxsize=4096)
def accuracy_95(definition: PrivacyDefinition, scale: float) -> float:
    """Half-width that covers one cell's noise with probability 0.95 (OpenDP's accuracy)."""
    if definition is PrivacyDefinition.PURE:
        return float(dp.discrete_laplacian_scale_to_accuracy(scale=scale, alpha=ALPHA_95))
    if scale > _EXACT_GAUSSIAN_ACCURACY_MAX_SCALE:
        # OpenDP sums the discrete Gaussian's mass term by term, which takes
        # seconds at large scales; there the continuous Gaussian's accuracy,
        # rounded up and widened by one, matches or exceeds the discrete one.
        return float(math.ceil(dp.gaussian_scale_to_accuracy(scale=scale, alpha=ALPHA_95)) + 1)
    return float(dp.discrete_gaussian_scale_to_accuracy(scale=scale, alpha=ALPHA_95))


_release_lock = threading.Lock()


def release(
    values: npt.NDArray[np.int64],
    sensitivity: float,
    budget: Fraction,
    definition: PrivacyDefinition,
) -> NoisyVector:
    """Add OpenDP noise calibrated to ``sensitivity`` and ``budget`` to an exact vector.

    ``sensitivity`` is the L1 (pure DP) or L2 (zCDP) distance between the
    vectors of two datasets that differ by one client with all their records.
    """
    scale = calibrate(definition, float(sensitivity), budget)
    charge = privacy_cost(definition, scale, sensitivity)
    exact = np.ascontiguousarray(values, dtype=np.int64)
    noisy = np.asarray(_measurement(definition, scale)(exact), dtype=np.int64)
    return NoisyVector(
        values=noisy,
        distribution=distribution_name(definition),
        scale=scale,
        accuracy_95=accuracy_95(definition, scale),
        charge=charge,
    )


# ---------------------------------------------------------------- a share of one noise


@dataclass(frozen=True)
class NoiseShare:
    """What one node adds to a secure sum, and the two things it can vouch for.

    ``worst_case`` (ρ_local) is OpenDP's map of this node's share alone, at
    scale ``share_scale`` and sensitivity γΔ: it holds even if the
    coordinator and every other node collude, and is about h times
    ``aggregate``. ``aggregate`` (ρ_agg) is OpenDP's map at √h·σᵢ, the
    scale of the honest shares' sum, plus KLS21's τ·d rounded up: it holds
    if secure aggregation holds and at most the assumed number of peers
    collude. Both are charged; the privacy unit is one client with all
    their records, as for every release.
    """

    scale_factor: int  # γ
    share_scale: float  # σᵢ, in scaled units
    honest: int  # h
    worst_case: Fraction
    aggregate: Fraction
    tau_term: Fraction


def _at_most(value: float) -> float:
    """A float no larger than the real value ``value`` approximates (two ulps down).

    ``math.sqrt(h) * σ`` is within 1.5 ulps of √h·σ; evaluating OpenDP's map at
    a scale no larger than the true one can only overstate the charge.
    """
    return math.nextafter(math.nextafter(value, 0.0), 0.0)


@lru_cache(maxsize=1024)
def plan_share(
    sensitivity: float, budget: Fraction, cohort: Cohort, scale_factor: int, length: int
) -> NoiseShare:
    """The least share of one discrete Gaussian whose honest sum costs at most ``budget`` (ρ).

    ``sensitivity`` is the L2 distance of the unscaled integer aggregate
    when one client and all their records are removed. The share scale σᵢ
    is the smallest found for which OpenDP's map at √h·σᵢ, plus the τ
    allowance, fits the budget; :func:`check_share` then judges it as it
    judges a scale a session proposes.
    """
    check_scale_factor(scale_factor)
    if sensitivity <= 0 or budget <= 0:
        raise NoiseShareError("sensitivity and budget must be positive")
    honest = cohort.honest
    scaled = float(sensitivity) * scale_factor  # exact: γ is a power of two
    map_budget = budget - budget * TAU_ALLOWANCE
    share_scale = calibrate(PrivacyDefinition.ZCDP, scaled, map_budget) / math.sqrt(honest)
    for _ in range(_MAX_SCALE_STEPS):
        if _honest_sum_cost(scaled, honest, share_scale) <= map_budget:
            break
        share_scale = math.nextafter(share_scale, math.inf) * (1.0 + 2.0**-40)
    else:  # pragma: no cover - calibrate already found a scale that fits
        raise ArithmeticError("no share scale fits the privacy budget")
    return check_share(sensitivity, budget, cohort, scale_factor, share_scale, length)


def _honest_sum_cost(scaled_sensitivity: float, honest: int, share_scale: float) -> Fraction:
    """OpenDP's map for the sum of ``honest`` shares: at scale √h·σᵢ, taken a hair low."""
    return privacy_cost(
        PrivacyDefinition.ZCDP, _at_most(math.sqrt(honest) * share_scale), scaled_sensitivity
    )


@lru_cache(maxsize=1024)
def check_share(
    sensitivity: float,
    budget: Fraction,
    cohort: Cohort,
    scale_factor: int,
    share_scale: float,
    length: int,
) -> NoiseShare:
    """What this node can vouch for if it adds a share at ``share_scale`` (σᵢ, scaled units).

    Every member of a session adds shares at the scale the session states,
    so that the KLS21 bound, which is for h equal shares, holds for each
    node's own sensitivity. Refused when σᵢ is under
    :data:`~tiaki.distributed_noise.MIN_SHARE_SCALE` (the sum would not be
    Gaussian), when the honest sum would cost more than ``budget`` at this
    node's sensitivity (the session's noise is too small for it), or when
    τ·d is not negligible against ``budget``.
    """
    check_scale_factor(scale_factor)
    if sensitivity <= 0 or budget <= 0:
        raise NoiseShareError("sensitivity and budget must be positive")
    if not math.isfinite(share_scale) or share_scale < MIN_SHARE_SCALE:
        raise NoiseShareError(
            f"each share's noise would have scale {share_scale:.3g}, under "
            f"{MIN_SHARE_SCALE:g}, at scale factor {scale_factor}: the sum of the shares "
            "would not be Gaussian; use a larger scale factor"
        )
    honest = cohort.honest
    scaled = float(sensitivity) * scale_factor
    allowance = budget * TAU_ALLOWANCE
    tau_cost = tau_term(share_scale, honest, length)
    if tau_cost > allowance:
        raise NoiseShareError(
            f"the KLS21 τ term ({display_amount(tau_cost)}) is not negligible against the cost "
            f"{display_amount(budget)}; use a larger scale factor"
        )
    aggregate = _honest_sum_cost(scaled, honest, share_scale) + tau_cost
    if aggregate > budget:
        raise NoiseShareError(
            f"the session's noise (share scale {share_scale:.6g}) is too small for this "
            f"node's sensitivity at cost {display_amount(budget)}: its sum would cost "
            f"{display_amount(aggregate)}"
        )
    return NoiseShare(
        scale_factor=scale_factor,
        share_scale=share_scale,
        honest=honest,
        worst_case=privacy_cost(PrivacyDefinition.ZCDP, share_scale, scaled),
        aggregate=aggregate,
        tau_term=tau_cost,
    )


def release_share(values: npt.NDArray[np.int64], share: NoiseShare) -> npt.NDArray[np.int64]:
    """γ·values plus this node's share of the noise, drawn by OpenDP at scale σᵢ.

    Nothing is charged here; the caller has charged ``share``'s amounts
    durably first. The result is still to be masked: alone it is protected
    only by ``worst_case``.
    """
    exact = np.ascontiguousarray(values, dtype=np.int64) * np.int64(share.scale_factor)
    return np.asarray(
        _measurement(PrivacyDefinition.ZCDP, share.share_scale)(exact), dtype=np.int64
    )
