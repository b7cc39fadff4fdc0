"""Shamir secret sharing over the prime field GF(P), P = 2**255 - 19.

In Bonawitz et al. each node shares two secrets t-out-of-n with the others:
the seed of its self-mask and the private key its pairwise masks are agreed
with. Once the masked vectors are in, the coordinator asks each surviving
node, for each other node, for one of the two shares (never both): the
self-mask seeds of the nodes that sent a vector, the private keys of those
that dropped out, so it can remove both kinds of mask from the sum and from
nothing else.

Why this field: it is prime, so every non-zero difference of share points is
invertible (which Lagrange interpolation needs), and its elements fit in the
32 bytes of a ChaCha20 key seed or an X25519 private key, so a seed or key
drawn as a field element is shared without any encoding loss.

Fewer than ``threshold`` shares reveal nothing: for any candidate secret there
is exactly one polynomial of degree ``threshold - 1`` through them and that
secret, and the coefficients are uniform, so every secret is equally likely.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

from tiaki.secagg.errors import SecureAggregationError

P = 2**255 - 19


def random_element() -> int:
    """A uniform element of GF(P): a seed, a private key or a polynomial coefficient."""
    return secrets.randbelow(P)


def is_element(value: object) -> bool:
    """Whether ``value`` is an int (not a bool) in [0, P)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < P


def _check_element(value: object, what: str) -> int:
    # The value itself is never put in the message: it may be a secret or a share.
    if not is_element(value):
        raise SecureAggregationError(f"{what} must be an integer in [0, 2**255 - 19)")
    assert isinstance(value, int)
    return value


def _check_points(xs: Iterable[object], what: str) -> list[int]:
    """Distinct share points in 1..P-1; 0 is where the secret sits, so it is no point."""
    points: list[int] = []
    seen: set[int] = set()
    for x in xs:
        if not is_element(x) or x == 0:
            raise SecureAggregationError(
                f"{what} must be integers in 1..2**255 - 20, not {x!r:.40}"
            )
        assert isinstance(x, int)
        if x in seen:
            raise SecureAggregationError(f"{what} must be distinct; {x} appears twice")
        seen.add(x)
        points.append(x)
    if not points:
        raise SecureAggregationError(f"{what} must not be empty")
    return points


def _check_threshold(threshold: object) -> int:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise SecureAggregationError(
            f"the threshold must be an integer of at least 1, not {threshold!r:.40}"
        )
    return threshold


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial with these coefficients (constant term first) at ``x``, by Horner."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % P
    return value


def split(secret: int, threshold: int, holders: Sequence[int]) -> dict[int, int]:
    """Shares of ``secret``, one for each holder, any ``threshold`` of which rebuild it.

    A holder's share is a random polynomial of degree ``threshold - 1`` with
    constant term ``secret``, evaluated at the holder's index; the result maps
    each index to its share.
    """
    _check_element(secret, "a secret")
    points = _check_points(holders, "holders")
    _check_threshold(threshold)
    if threshold > len(points):
        raise SecureAggregationError(
            f"the threshold {threshold} exceeds the number of holders, {len(points)}"
        )
    coefficients = [secret] + [random_element() for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in points}


def lagrange_at_zero(xs: Iterable[int]) -> dict[int, int]:
    """The Lagrange coefficients that take shares at ``xs`` to the secret at 0.

    ``secret = Σ coefficient[x] · share[x] mod P``. They depend only on the
    points, so the coordinator computes them once per set of survivors and
    applies them to every secret those survivors share.
    """
    points = _check_points(xs, "share points")
    coefficients: dict[int, int] = {}
    for i in points:
        numerator, denominator = 1, 1
        for j in points:
            if j != i:
                numerator = numerator * j % P
                denominator = denominator * (j - i) % P
        coefficients[i] = numerator * pow(denominator, -1, P) % P
    return coefficients


def reconstruct(shares: Mapping[int, int], threshold: int) -> int:
    """The secret from ``threshold`` of ``shares`` (index to share).

    When more are given, the ``threshold`` with the smallest indices are used,
    so the result does not depend on the order they arrived in. The others are
    not checked against the polynomial: a share is trusted because it came
    sealed (:func:`tiaki.secagg.keys.open_sealed`) from the node that holds it.
    """
    for x, share in shares.items():
        _check_points([x], "share points")
        _check_element(share, f"the share at {x}")
    _check_threshold(threshold)
    if len(shares) < threshold:
        raise SecureAggregationError(
            f"{len(shares)} shares cannot rebuild a secret shared with threshold {threshold}"
        )
    chosen = sorted(shares)[:threshold]
    coefficients = lagrange_at_zero(chosen)
    return sum(coefficients[x] * shares[x] for x in chosen) % P
