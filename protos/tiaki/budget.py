"""Exact privacy amounts.

Budgets and charges are :class:`fractions.Fraction`, never floats. Costs cross
the wire and sit in files as decimal strings. OpenDP's privacy maps return
binary floats, which are dyadic rationals, and configured budgets are decimal,
so every sum or difference tiaki forms has a denominator of the form 2^a·5^b
and a finite, exact decimal expansion: :func:`format_amount` writes it out in
full, so nothing is rounded on the way to the ledger or the wire.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

# A sanity ceiling: no meaningful privacy budget is this large, and a cap
# keeps exact arithmetic cheap for hostile inputs such as "1e999999".
MAX_AMOUNT = Fraction(10**6)
MAX_DECIMAL_CHARS = 64


class PrivacyDefinition(StrEnum):
    """How a node accounts: pure ε-DP or ρ-zero-concentrated DP."""

    PURE = "pure"
    ZCDP = "zcdp"

    @property
    def symbol(self) -> str:
        """The amount's name in ASCII, for JSON keys and messages: ``epsilon`` or ``rho``."""
        return "epsilon" if self is PrivacyDefinition.PURE else "rho"

    @property
    def letter(self) -> str:
        """The letter readers know from the papers: ``ε`` for pure DP, ``ρ`` for zCDP."""
        return "ε" if self is PrivacyDefinition.PURE else "ρ"


class AmountError(ValueError):
    """A privacy amount that is not a positive, finite, exact decimal."""


# The one grammar for a privacy amount, wherever a person or a program writes
# one (the wire, node.yaml, query files, the command line): ASCII digits with
# at most one dot between digits. No sign, exponent, underscore, space or
# non-ASCII digit, so "1_0", "1e-1", " 0.5" and Arabic-Indic digits are all
# refused, and what was written is exactly what is charged.
AMOUNT_GRAMMAR = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
MAX_DECIMAL_PLACES = 30


def parse_amount(text: str, *, what: str = "privacy cost", allow_zero: bool = False) -> Fraction:
    """Parse a decimal string such as ``"0.5"`` into an exact Fraction.

    Accepts only :data:`AMOUNT_GRAMMAR` (at most :data:`MAX_DECIMAL_CHARS`
    characters and :data:`MAX_DECIMAL_PLACES` places), positive (or zero with
    ``allow_zero``) and at most :data:`MAX_AMOUNT`.
    """
    if not text:
        raise AmountError(f"{what} is empty; give a positive decimal such as 0.5")
    if len(text) > MAX_DECIMAL_CHARS:
        raise AmountError(f"{what} {text[:20]!r}... is too long to be a privacy amount")
    if not AMOUNT_GRAMMAR.fullmatch(text):
        raise AmountError(_not_an_amount(text, what))
    places = len(text.partition(".")[2])
    if places > MAX_DECIMAL_PLACES:
        raise AmountError(
            f"{what} {text[:20]!r}... has more than {MAX_DECIMAL_PLACES} decimal places"
        )
    value = Fraction(text)
    if value == 0 and not allow_zero:
        raise AmountError(f"{what} must be greater than zero, not {text!r}")
    if value > MAX_AMOUNT:
        raise AmountError(f"{what} {text!r} is implausibly large (at most {MAX_AMOUNT})")
    return value


def _not_an_amount(text: str, what: str) -> str:
    """Why ``text`` is refused, in the words most likely to help."""
    bare = text.strip().lower().lstrip("+-")
    if bare in ("nan", "inf", "infinity"):
        return f"{what} must be a finite number, not {text!r}"
    if text.strip().startswith("-"):
        return f"{what} must be greater than zero, not {text!r}"
    return (
        f"{what} {text!r} is not a number in plain decimal digits: write 0-9 with at most "
        "one dot, such as 0.5 (no sign, exponent, underscore or space)"
    )


def format_amount(value: Fraction) -> str:
    """Exact decimal text for a Fraction whose denominator is 2^a·5^b.

    Anything else (which tiaki never produces) is written as ``p/q`` rather
    than rounded, so an exact value can always be read back.
    """
    num, den = value.numerator, value.denominator
    twos = fives = 0
    d = den
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d != 1:
        return f"{num}/{den}"
    digits = max(twos, fives)
    scaled = num * (10**digits // den)
    sign = "-" if scaled < 0 else ""
    text = str(abs(scaled)).rjust(digits + 1, "0")
    if digits == 0:
        return sign + text
    whole, frac = text[:-digits], text[-digits:].rstrip("0")
    return sign + whole + ("." + frac if frac else "")


def read_amount(text: str) -> Fraction:
    """Inverse of :func:`format_amount` (accepts ``p/q`` too). For stored values."""
    return Fraction(text)


def display_amount(value: Fraction, digits: int = 6) -> str:
    """``value`` to about ``digits`` significant digits, for people; never used for
    arithmetic or storage.

    The rounding is exact decimal rounding of the Fraction (half to even), so
    what is shown never carries a float's artefacts.
    """
    if value == 0:
        return "0"
    # The logarithms only choose how many decimal places to keep.
    magnitude = math.floor(math.log10(abs(value.numerator)) - math.log10(value.denominator))
    places = max(0, digits - 1 - magnitude)
    return format_amount(round(value, places))


@dataclass(frozen=True)
class PeriodBudget:
    """Spending in one budget period (or the whole lifetime)."""

    label: str
    start: str
    end: str
    limit: Fraction
    spent: Fraction

    @property
    def remaining(self) -> Fraction:
        return max(Fraction(0), self.limit - self.spent)


@dataclass(frozen=True)
class BudgetStatus:
    """A node's budget as it reports it: the node's ledger is the record."""

    definition: PrivacyDefinition
    per_query_max: Fraction
    current: PeriodBudget
    lifetime_spent: Fraction
    lifetime_limit: Fraction | None
    periods: tuple[PeriodBudget, ...]

    @property
    def available(self) -> Fraction:
        """What the next query may spend: the tightest of period and lifetime."""
        left = self.current.remaining
        if self.lifetime_limit is not None:
            left = min(left, max(Fraction(0), self.lifetime_limit - self.lifetime_spent))
        return left
