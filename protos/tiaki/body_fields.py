"""Reading the fields of a ledger chain entry's body, each of one exact type.

A body is JSON from a ledger or an export, so untrusted: every reader here
checks the type it expects and raises :class:`~tiaki.chain.ChainFormatError`
naming the field otherwise. Amounts are exact decimal text in a body and
:class:`~fractions.Fraction` once read; :data:`EXACT_AMOUNT` is refused
anything else before Fraction sees it. Used by :mod:`tiaki.ledger_records`
and :mod:`tiaki.secure_records`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from tiaki.budget import format_amount, read_amount
from tiaki.chain import ChainFormatError

# What format_amount writes: plain decimals (a float's exact expansion has at
# most 1,074 fractional digits) or "p/q". Anything else is refused before
# Fraction sees it: "1e999999999" would take Fraction hours to expand.
EXACT_AMOUNT = re.compile(r"\d{1,20}(\.\d{1,1100})?|\d{1,1200}/\d{1,1200}")
HEX = re.compile(r"[0-9a-f]+")


def text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ChainFormatError(f"'{key}' must be a string")
    return value


def optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ChainFormatError(f"'{key}' must be a string or null")
    return value


def hex_text(body: Mapping[str, Any], key: str, length: int) -> str:
    """Lower-case hexadecimal of exactly ``length`` characters."""
    value = text(body, key)
    if len(value) != length or not HEX.fullmatch(value):
        raise ChainFormatError(f"'{key}' must be {length} lower-case hex digits")
    return value


def amount_text(value: str, key: str) -> Fraction:
    if not EXACT_AMOUNT.fullmatch(value):
        raise ChainFormatError(f"'{key}' is not an exact amount: {value!r:.40}")
    try:
        amount = read_amount(value)
    except (ValueError, ZeroDivisionError):
        raise ChainFormatError(f"'{key}' is not an exact amount: {value!r:.40}") from None
    if amount < 0:
        raise ChainFormatError(f"'{key}' is negative")
    return amount


def amount(body: Mapping[str, Any], key: str) -> Fraction:
    return amount_text(text(body, key), key)


def optional_amount(body: Mapping[str, Any], key: str) -> Fraction | None:
    return None if body.get(key) is None else amount(body, key)


def count(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ChainFormatError(f"'{key}' must be a non-negative integer")
    return value


def counts(body: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = body.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ChainFormatError(f"'{key}' must be a list of non-negative integers")
    return tuple(value)


def texts(body: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ChainFormatError(f"'{key}' must be a list of strings")
    return tuple(value)


def objects(body: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ChainFormatError(f"'{key}' must be a list of objects")
    return value


def float_text(value: float) -> str:
    """A positive finite float as a body writes it: its shortest repr, which reads back exactly."""
    if not (math.isfinite(value) and value > 0):
        raise ChainFormatError(f"a recorded scale must be a positive finite number, not {value!r}")
    return repr(float(value))


def read_float(value: object, key: str) -> float:
    """A float written by :func:`float_text`; its text must be exactly that repr."""
    if not isinstance(value, str) or len(value) > 40:
        raise ChainFormatError(f"'{key}' must hold numbers written as text")
    try:
        number = float(value)
    except ValueError:
        raise ChainFormatError(f"'{key}' holds {value!r}, not a number") from None
    if not (math.isfinite(number) and number > 0) or repr(number) != value:
        raise ChainFormatError(f"'{key}' holds {value!r}, not a positive float's repr")
    return number


def opt(value: Fraction | None) -> str | None:
    return None if value is None else format_amount(value)
