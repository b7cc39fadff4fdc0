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

from tiaki.budget import PrivacyDefinition

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
