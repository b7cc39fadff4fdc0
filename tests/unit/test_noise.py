"""The noise: OpenDP's discrete Laplace / discrete Gaussian, calibrated and reported honestly.

OpenDP samples with its own CSPRNG and takes no seed, so these are
statistical tests: many draws, compared with the exact distribution of the
returned scale, with tolerances of SIGMAS standard errors (each written next
to its check). At 6 standard errors a correct implementation fails a given
check with probability about 2e-9, so the file is not flaky in practice, while
a wrong scale (say off by 5%) or a biased sampler fails it surely.

Also: calibrate() charges at most the budget and wastes no more than a
relative 1e-9 of it; OpenDP's only enabled feature is "contrib"; and no
product module draws randomness of its own (docs/privacy.md, "Noise").
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import node.mechanisms as mechanisms
from tiaki.budget import PrivacyDefinition

PURE = PrivacyDefinition.PURE
ZCDP = PrivacyDefinition.ZCDP
ROOT = Path(__file__).resolve().parents[2]

N = 100_000  # draws per configuration: about 0.5 s of OpenDP sampling each
SIGMAS = 6.0  # tolerance in standard errors; P(|Z| > 6) ≈ 2e-9 per check


# ---------------------------------------------------------------- exact distributions


@dataclass(frozen=True)
class Exact:
    """Moments and coverage of an integer distribution symmetric about 0, from its pmf."""

    pmf: Callable[[int], float]  # unnormalised
    radius: int  # support truncated to [-radius, radius]; the rest is below 1e-30

    def _sum(self, f: Callable[[int], float]) -> float:
        return math.fsum(f(x) * self.pmf(x) for x in range(-self.radius, self.radius + 1))

    @property
    def total(self) -> float:
        return self._sum(lambda x: 1.0)

    @property
    def variance(self) -> float:
        return self._sum(lambda x: float(x * x)) / self.total

    @property
    def fourth_moment(self) -> float:
        return self._sum(lambda x: float(x**4)) / self.total

    def coverage(self, half_width: float) -> float:
        """P(|X| <= half_width)."""
        return self._sum(lambda x: 1.0 if abs(x) <= half_width else 0.0) / self.total


def discrete_laplace(scale: float) -> Exact:
    q = math.exp(-1.0 / scale)
    return Exact(lambda x: q ** abs(x), radius=int(80 * scale) + 20)


def discrete_gaussian(sigma: float) -> Exact:
    return Exact(lambda x: math.exp(-(x * x) / (2 * sigma * sigma)), radius=int(12 * sigma) + 20)


def exact_for(definition: PrivacyDefinition, scale: float) -> Exact:
    return discrete_laplace(scale) if definition is PURE else discrete_gaussian(scale)


def test_exact_distributions_match_their_closed_forms() -> None:
    """Checks the checker: the summed pmfs give the textbook variances."""
    for s in (0.5, 2.0, 30.0):
        q = math.exp(-1.0 / s)
        assert math.isclose(discrete_laplace(s).variance, 2 * q / (1 - q) ** 2, rel_tol=1e-9)
    for sigma in (1.0, 4.0, 10.0):
        # The discrete Gaussian's variance is below σ² by about 4π²σ²·e^{-2π²σ²}:
        # under 1e-6 relative from σ = 1 on.
        assert math.isclose(discrete_gaussian(sigma).variance, sigma**2, rel_tol=1e-6)


# ---------------------------------------------------------------- releases

# (definition, sensitivity, budget): scales from under 1 to 30, integer and
# irrational L2 sensitivities.
CONFIGS = [
    (PURE, 1, Fraction(2)),  # s = 0.5: strongly discrete
    (PURE, 1, Fraction(1, 2)),  # s = 2
    (PURE, 3, Fraction(1, 10)),  # s = 30
    (ZCDP, 1.0, Fraction(1, 2)),  # σ = 1
    (ZCDP, math.sqrt(3), Fraction(3, 8)),  # σ ≈ 2, the √m of a distinct count
    (ZCDP, 2.0, Fraction(1, 50)),  # σ = 10
]
CONFIG_IDS = [f"{d.value}-sens{s:g}-budget{b}" for d, s, b in CONFIGS]


@dataclass(frozen=True)
class Sample:
    definition: PrivacyDefinition
    sensitivity: float
    budget: Fraction
    release: mechanisms.NoisyVector
    noise: npt.NDArray[np.int64]


_SAMPLES: dict[tuple[PrivacyDefinition, float, Fraction], Sample] = {}


def sample(definition: PrivacyDefinition, sensitivity: float, budget: Fraction) -> Sample:
    """One release of N cells (cached per configuration: shared by several checks)."""
    key = (definition, sensitivity, budget)
    if key not in _SAMPLES:
        # A varied exact vector, so noise is seen to be added cell by cell.
        exact = ((np.arange(N, dtype=np.int64) * 7919) % 2001) - 1000
        released = mechanisms.release(exact, sensitivity, budget, definition)
        assert released.values.dtype == np.int64 and released.values.shape == (N,)
        _SAMPLES[key] = Sample(definition, sensitivity, budget, released, released.values - exact)
    return _SAMPLES[key]


@pytest.mark.parametrize(("definition", "sensitivity", "budget"), CONFIGS, ids=CONFIG_IDS)
def test_release_reports_the_distribution_scale_and_charge(
    definition: PrivacyDefinition, sensitivity: float, budget: Fraction
) -> None:
    rel = sample(definition, sensitivity, budget).release
    assert rel.distribution == ("discrete_laplace" if definition is PURE else "discrete_gaussian")
    assert rel.scale == mechanisms.calibrate(definition, float(sensitivity), budget)
    # The textbook scale (Δ/ε, or Δ/√(2ρ)) to within calibrate's nudges.
    textbook = (
        sensitivity / float(budget)
        if definition is PURE
        else sensitivity / math.sqrt(2 * float(budget))
    )
    assert textbook <= rel.scale * (1 + 1e-12)
    assert math.isclose(rel.scale, textbook, rel_tol=1e-9)
    assert rel.charge == mechanisms.privacy_cost(definition, rel.scale, sensitivity) <= budget
    assert rel.accuracy_95 == mechanisms.accuracy_95(definition, rel.scale)


@pytest.mark.parametrize(("definition", "sensitivity", "budget"), CONFIGS, ids=CONFIG_IDS)
def test_noise_has_mean_zero_and_the_variance_of_its_scale(
    definition: PrivacyDefinition, sensitivity: float, budget: Fraction
) -> None:
    s = sample(definition, sensitivity, budget)
    exact = exact_for(definition, s.release.scale)
    var, m4 = exact.variance, exact.fourth_moment
    x = s.noise.astype(np.float64)

    # Mean: standard error sqrt(Var / N).
    assert abs(x.mean()) <= SIGMAS * math.sqrt(var / N)

    # Variance about the known mean 0: mean of x², whose standard error is
    # sqrt((E[X⁴] − Var²) / N) — about 2% of Var for the Laplace at N = 1e5,
    # so 6 SE is about ±12%, ±3.5% for the Gaussian (kurtosis 3).
    second = float(np.mean(x * x))
    assert abs(second - var) <= SIGMAS * math.sqrt((m4 - var * var) / N), (second, var)

    # Symmetry: as many positive as negative draws, P(X > 0) = P(X < 0).
    pos, neg = int(np.sum(s.noise > 0)), int(np.sum(s.noise < 0))
    assert abs(pos - neg) <= SIGMAS * math.sqrt(pos + neg)

    # Independence of neighbouring cells: lag-1 correlation, SE 1/√N.
    r = float(np.corrcoef(x[:-1], x[1:])[0, 1])
    assert abs(r) <= SIGMAS / math.sqrt(N)


@pytest.mark.parametrize(("definition", "sensitivity", "budget"), CONFIGS, ids=CONFIG_IDS)
def test_accuracy_95_covers_about_95_percent_of_the_noise(
    definition: PrivacyDefinition, sensitivity: float, budget: Fraction
) -> None:
    s = sample(definition, sensitivity, budget)
    half_width = s.release.accuracy_95
    exact = exact_for(definition, s.release.scale)
    p = exact.coverage(half_width)

    # OpenDP's accuracy is a bound: P(|X| >= a) <= 0.05, so coverage >= 0.95.
    # Noise is an integer, so coverage moves in steps of P(|X| = j); it can
    # exceed 0.95 by up to one step (for s = 0.5, 0.968; for s = 30, 0.951).
    assert p >= 0.95 - 1e-12
    if definition is PURE:
        # The discrete Laplace accuracy is tight to one lattice step: one
        # less and coverage drops below 95%.
        assert exact.coverage(half_width - 1) < 0.95
        assert p <= 0.97
    else:
        # OpenDP's discrete Gaussian accuracy comes from a tail bound and is
        # conservative (σ = 1: a = 3, coverage 0.9997; σ = 10: a = 21,
        # coverage 0.969), but never more than 3.1σ here.
        assert half_width <= 3.1 * s.release.scale

    # The empirical coverage matches the exact one: binomial SE sqrt(p(1-p)/N),
    # at most 0.0007 at N = 1e5, so 6 SE is at most ±0.004.
    observed = float(np.mean(np.abs(s.noise) <= half_width))
    assert abs(observed - p) <= SIGMAS * math.sqrt(p * (1 - p) / N) + 1e-12, (observed, p)


def test_each_release_draws_fresh_noise() -> None:
    """No seed, no reuse: two releases of the same vector differ (a tie has P < 1e-300)."""
    exact = np.zeros(1000, dtype=np.int64)
    a = mechanisms.release(exact, 1, Fraction(1, 2), PURE).values
    b = mechanisms.release(exact, 1, Fraction(1, 2), PURE).values
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------- calibration

CALIBRATIONS: list[tuple[float, Fraction]] = [
    (1, Fraction(1, 10)),
    (1, Fraction(1, 2)),
    (2, Fraction(1)),
    (3, Fraction(3, 7)),
    (7, Fraction(1, 1000)),
    (1000, Fraction(1, 3)),
    (3 * 2_621_440, Fraction(1, 20)),  # a float sum's bound on the 2**20 grid
    (math.sqrt(3), Fraction(1, 4)),
    (math.nextafter(math.sqrt(6), math.inf), Fraction(5, 17)),
]


def test_calibration_judges_the_budget_exactly_where_floats_would_overspend() -> None:
    """float(1/10) is a little above 1/10: at the textbook scale OpenDP's map is
    float(0.1), which a float comparison accepts and an exact one must not."""
    budget = Fraction(1, 10)
    textbook = 1 / float(budget)
    at_textbook = mechanisms.privacy_cost(PURE, textbook, 1)
    assert float(at_textbook) <= float(budget)  # a float comparison would let it through
    assert at_textbook > budget  # ...and overspend the exact budget
    scale = mechanisms.calibrate(PURE, 1.0, budget)
    assert scale > textbook
    assert mechanisms.privacy_cost(PURE, scale, 1) <= budget
    released = mechanisms.release(np.zeros(3, dtype=np.int64), 1, budget, PURE)
    assert released.charge <= budget and released.scale == scale


@pytest.mark.parametrize(
    ("definition", "sensitivity", "budget"),
    [
        (definition, sensitivity, budget)
        for definition in (PURE, ZCDP)
        for sensitivity, budget in CALIBRATIONS
        if definition is ZCDP or float(sensitivity).is_integer()  # L1 bounds are integers
    ],
    ids=str,
)
def test_calibrate_spends_the_budget_without_exceeding_or_wasting_it(
    definition: PrivacyDefinition, sensitivity: float, budget: Fraction
) -> None:
    scale = mechanisms.calibrate(definition, float(sensitivity), budget)
    charge = mechanisms.privacy_cost(definition, scale, sensitivity)
    assert isinstance(charge, Fraction)
    assert charge <= budget
    assert charge >= budget * (1 - Fraction(1, 10**9))  # not wastefully small
    # And the charge is OpenDP's map at the *claimed* sensitivity, monotone in it.
    assert mechanisms.privacy_cost(definition, scale, 2 * sensitivity) > charge


def test_calibrate_refuses_non_positive_inputs() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        mechanisms.calibrate(PURE, 0.0, Fraction(1))
    with pytest.raises(ValueError, match="must be positive"):
        mechanisms.calibrate(ZCDP, 1.0, Fraction(0))
    with pytest.raises(ValueError, match="integer L1 sensitivity"):
        mechanisms.release(np.zeros(3, dtype=np.int64), 1.5, Fraction(1), PURE)


# ---------------------------------------------------------------- OpenDP features


def test_contrib_is_the_only_opendp_feature_enabled() -> None:
    from opendp.mod import GLOBAL_FEATURES

    assert mechanisms.ENABLED_FEATURES == ("contrib",)
    assert set(GLOBAL_FEATURES) == {"contrib"}


# ---------------------------------------------------------------- no home-made randomness

PRODUCT_DIRS = ("node", "coordinator", "protos/tiaki")
EXEMPT = {"node/synth.py"}  # synthetic demo data only, never a privacy mechanism
# secrets is allowed where it protects something other than a release:
SECRETS_ALLOWED = {
    "node/store.py",  # the secret salt for tie-breaks in bounding; random dataset versions
    "protos/tiaki/receipts.py",  # salts that make answer commitments unguessable
    "node/server.py",  # random references for internal-error messages
    "protos/tiaki/files.py",  # unguessable temporary file names while writing keys
    "coordinator/secure_sum.py",  # random session ids, never noise
    "node/hub_link.py",  # jitter for reconnecting to a hub, never noise
    "protos/tiaki/envelopes.py",  # envelope nonces, never noise
    # Secure aggregation draws key material and polynomial coefficients, never
    # noise: the noise of every release still comes only from OpenDP.
    "protos/tiaki/secagg/shamir.py",  # mask seeds, private keys, Shamir coefficients
    "protos/tiaki/secagg/keys.py",  # the nonces of sealed messages: key material, not noise
}
ENABLE_FEATURES_ALLOWED = {"node/mechanisms.py"}


def product_modules() -> Iterator[tuple[str, ast.Module]]:
    for top in PRODUCT_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in EXEMPT:
                yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def randomness_uses(rel: str, tree: ast.Module) -> list[str]:
    """Every import of random/secrets/numpy.random, every ``<numpy>.random`` and urandom call."""
    numpy_names = {"numpy"} | {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "numpy"
    }
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in modules:
            root = name.split(".")[0]
            home_made = root == "random" or name.startswith("numpy.random")
            if home_made or (root == "secrets" and rel not in SECRETS_ALLOWED):
                found.append(f"{rel}:{line}: imports {name}")
        if isinstance(node, ast.Attribute) and node.attr == "random":
            owner = _dotted(node.value)
            if owner in numpy_names:
                found.append(f"{rel}:{line}: uses {owner}.random")
        if isinstance(node, ast.Call) and _dotted(node.func).endswith("urandom"):
            found.append(f"{rel}:{line}: calls {_dotted(node.func)}")
    return found


def test_the_product_scan_finds_the_product() -> None:
    scanned = {rel for rel, _ in product_modules()}
    for expected in ("node/mechanisms.py", "node/engine.py", "node/store.py", "node/server.py"):
        assert expected in scanned
    assert any(rel.startswith("coordinator/") for rel in scanned)
    assert any(rel.startswith("protos/tiaki/") for rel in scanned)
    assert not scanned & EXEMPT


def test_the_randomness_scan_can_fail() -> None:
    bad = ast.parse(
        "import random\nimport numpy as xp\nfrom numpy.random import default_rng\n"
        "import secrets\nx = xp.random.default_rng(0)\ny = os.urandom(4)\nz = numpy.random\n"
    )
    assert len(randomness_uses("node/evil.py", bad)) == 7
    assert randomness_uses("node/store.py", ast.parse("import secrets\n")) == []


def test_no_product_module_draws_its_own_randomness() -> None:
    found = [use for rel, tree in product_modules() for use in randomness_uses(rel, tree)]
    assert found == []


def test_only_the_mechanisms_module_enables_opendp_features() -> None:
    callers = {
        rel
        for rel, tree in product_modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _dotted(node.func).endswith("enable_features")
    }
    assert callers <= ENABLE_FEATURES_ALLOWED
