"""The public arithmetic of one noise shared out among the nodes of a secure sum.

Under secure aggregation each node adds only a *share* of the noise and the
coordinator sees only the sum, so the sum carries one noise instead of N
(Kairouz, Liu and Steinke 2021, *The Distributed Discrete Gaussian Mechanism
for Federated Learning with Secure Aggregation*, "KLS21" below). This module
holds what both sides compute from public parameters alone: who is counted
as honest, the integer scale factor γ, the KLS21 τ term, and the noise the
sum carries. What a node charges is OpenDP's privacy map at these scales;
that lives on the node beside the other mechanisms (``node.mechanisms``).

Terms, for one session: ``size`` (N) nodes start, up to ``dropouts`` (t) may
fail, and a node assumes up to ``colluders`` (c) of the others work with the
coordinator (its policy says how many). The shares of at least
h = N − t − c honest nodes, its own included, are then in any sum that is
released, and only those count towards the aggregate guarantee: a colluder
knows its own share and can subtract it.

Why γ: a sum of discrete Gaussians is close to a discrete Gaussian only when
each share's scale is not small against the integer grid (KLS21, Thm. 1; at
σᵢ = 0.24, 18 shares summed to a variance of 0.0044 instead of 1). Integer
aggregates are therefore multiplied by a power of two γ, exactly, before the
noise is added, so that every share's scale is at least
:data:`MIN_SHARE_SCALE` in the scaled units; ρ is unchanged because the
sensitivity scales with the values. The coordinator divides the sum by γ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from tiaki.errors import InvalidQueryError

# The least scale of one node's share, in scaled units. At 2 the KLS21 τ for
# 1,000 shares is below 1e-13; at 0.5 it is in the tens (the table is in the tests).
MIN_SHARE_SCALE = 2.0
# τ·d must stay below this share of the charge, or the session is refused:
# what tiaki adds to OpenDP's map is then negligible, and is still charged.
TAU_ALLOWANCE = Fraction(1, 2**40)
# The τ term is rounded up on this grid, so a charge keeps a short exact decimal
# (thirty places, the most an amount may have).
TAU_GRID = 10**30
# γ is at most 2^30: scaled aggregates must stay far inside int64 and the ring.
MAX_SCALE_EXPONENT = 30


class NoiseShareError(InvalidQueryError):
    """Session parameters under which a node cannot vouch for its share of the noise.

    Raised before anything is charged or read; the message says which
    parameter to change.
    """


@dataclass(frozen=True)
class Cohort:
    """Who takes part in one secure sum, as one node counts them.

    ``size`` nodes start; the sum is released if at least ``size − dropouts``
    of them send their masked input; this node assumes at most ``colluders``
    of the others collude with the coordinator.
    """

    size: int
    dropouts: int
    colluders: int

    def __post_init__(self) -> None:
        if self.size < 2:
            raise NoiseShareError(f"a secure sum needs at least 2 nodes, not {self.size}")
        if not 0 <= self.dropouts < self.size:
            raise NoiseShareError(
                f"dropouts tolerated must be from 0 to {self.size - 1}, not {self.dropouts}"
            )
        if self.colluders < 0:
            raise NoiseShareError(f"colluders must be 0 or more, not {self.colluders}")
        if self.honest < 1:
            raise NoiseShareError(
                f"with {self.size} nodes, {self.dropouts} dropouts tolerated and "
                f"{self.colluders} colluders assumed, no honest node's noise is certain to "
                "be in the sum; ask more nodes or tolerate fewer dropouts"
            )

    @property
    def honest(self) -> int:
        """h: the honest nodes (this one included) whose shares are in any released sum."""
        return self.size - self.dropouts - self.colluders

    @property
    def least_survivors(self) -> int:
        """The fewest masked inputs a released sum may have: N − t."""
        return self.size - self.dropouts


def central_scale(sensitivity: float, budget: Fraction) -> float:
    """The discrete Gaussian scale one central release would use (Δ/√(2ρ)).

    A float that only chooses γ; what is charged is OpenDP's map, on the node.
    """
    if sensitivity <= 0 or budget <= 0:
        raise NoiseShareError("sensitivity and budget must be positive")
    return sensitivity / math.sqrt(2.0 * float(budget))


def smallest_scale_factor(sensitivity: float, budget: Fraction, honest: int) -> int:
    """The least power of two γ that gives each of ``honest`` shares a scale of at least 2.

    The share scale is γ·Δ/√(2ρ·h); the coordinator proposes this γ, and each
    node checks it against its own sensitivity.
    """
    return scale_factor_for(central_scale(sensitivity, budget), honest)


def scale_factor_for(central: float, honest: int) -> int:
    """The least power of two γ with γ·``central``/√h at least 2 (a little over, for rounding).

    ``central`` is one central release's scale: from a node's plan, or
    :func:`central_scale`.
    """
    if honest < 1:
        raise NoiseShareError(f"honest must be at least 1, not {honest}")
    if not central > 0:
        raise NoiseShareError("the central scale must be positive")
    unscaled = central / math.sqrt(honest)
    for exponent in range(MAX_SCALE_EXPONENT + 1):
        gamma: int = 1 << exponent
        # A margin of 2^-20 keeps the node's own (exact) check from landing just under.
        if unscaled * gamma >= MIN_SHARE_SCALE * (1 + 2**-20):
            return gamma
    raise NoiseShareError(
        f"the noise for this question is too small to share among {honest} nodes "
        f"(γ would exceed 2^{MAX_SCALE_EXPONENT}); ask with a smaller cost"
    )


def session_share_scale(central: float, honest: int, gamma: int) -> float:
    """The share scale σᵢ a session states, in scaled units: γ·σ/√h, raised a little.

    ``central`` is the largest central scale any member needs for this
    component at the requested cost (each node's plan says its own); every
    member then adds shares at this one scale, so each one's sum of h
    honest shares has at least the noise its own sensitivity needs. The
    raise (a relative 2^-30) covers floating-point rounding on the way.
    """
    check_scale_factor(gamma)
    if not central > 0 or honest < 1:
        raise NoiseShareError("the central scale must be positive and honest at least 1")
    return gamma * central / math.sqrt(honest) * (1 + 2**-30)


def check_scale_factor(gamma: int) -> None:
    """γ must be a power of two from 1 to 2^30: scaling by it is then exact in floats too."""
    if gamma < 1 or gamma & (gamma - 1) or gamma > 2**MAX_SCALE_EXPONENT:
        raise NoiseShareError(
            f"the scale factor must be a power of two from 1 to 2^{MAX_SCALE_EXPONENT}, not {gamma}"
        )


def tau(share_scale: float, honest: int) -> Fraction:
    """An upper bound on KLS21's τ for the sum of ``honest`` shares at ``share_scale``.

    τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1)) (KLS21, Thm. 1 and Prop. 14;
    it needs σ ≥ 1/2). Each term is computed in floating point, where exp and
    the products are each within a few units in the last place; the sum is
    then raised by a relative 2^-30, far more than n·2^-50 rounding errors
    could add for any n below a million, so the Fraction returned is at
    least the true τ. One share (n = 1) is exactly a discrete Gaussian: τ = 0.
    """
    if share_scale < 0.5:
        raise NoiseShareError(
            f"KLS21's bound needs a share scale of at least 1/2, not {share_scale}"
        )
    if not 1 <= honest < 10**6:
        raise NoiseShareError(f"honest must be from 1 to 999999, not {honest}")
    exponent = 2.0 * math.pi**2 * share_scale**2
    total = math.fsum(math.exp(-exponent * k / (k + 1)) for k in range(1, honest))
    return Fraction(10 * total) * (1 + Fraction(1, 2**30))


def tau_term(share_scale: float, honest: int, length: int) -> Fraction:
    """τ·d, rounded up onto :data:`TAU_GRID`: what the sum adds to OpenDP's map.

    KLS21 (Prop. 14) bounds the Rényi divergence of the released sum by
    α·Δ²/(2hσᵢ²) + τ·d for every α ≥ 1. Since α ≥ 1, τ·d ≤ α·τ·d, so the sum
    is (Δ²/(2hσᵢ²) + τ·d)-zCDP: the charge is OpenDP's map at scale √h·σᵢ
    plus this term.
    """
    if length < 1:
        raise NoiseShareError(f"the vector length must be at least 1, not {length}")
    bound = tau(share_scale, honest) * length
    return Fraction(math.ceil(bound * TAU_GRID), TAU_GRID)


def sum_variance(share_scales: Iterable[float], gamma: int) -> float:
    """Variance of the noise in a decoded sum: Σσᵢ² over the inputs it holds, over γ².

    A discrete Gaussian's variance is below its scale squared (Canonne, Kamath
    and Steinke 2020, *The Discrete Gaussian for Differential Privacy*), so
    this bounds the noise from above; the coordinator's intervals use it.
    """
    check_scale_factor(gamma)
    return math.fsum(s * s for s in share_scales) / (gamma * gamma)


def error_ratio(survivors: int, honest: int) -> float:
    """The sum's noise over one central release's, when ``survivors`` inputs are summed.

    Each share is calibrated so that ``honest`` of them suffice; the sum of
    ``survivors`` ≥ h shares has √(survivors/h) times the central noise.
    """
    if not 1 <= honest <= survivors:
        raise NoiseShareError(f"need 1 <= honest ({honest}) <= survivors ({survivors})")
    return math.sqrt(survivors / honest)
