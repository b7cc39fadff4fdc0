"""One period arithmetic for the ledger that charges and the audit that checks it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiaki.periods import LABEL_SHAPES, LIFETIME, period_bounds, period_dates, period_label


@given(
    kind=st.sampled_from(["yearly", "quarterly", "monthly"]),
    when=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
    ),
)
def test_every_moment_lies_in_the_period_its_label_names(kind: str, when: datetime) -> None:
    label = period_label(kind, when)
    assert LABEL_SHAPES[kind].fullmatch(label)
    start, end = period_bounds(label)
    assert start <= when.date().isoformat() < end
    # The next period starts where this one ends.
    after = datetime.fromisoformat(end).replace(tzinfo=UTC)
    assert period_label(kind, after) != label
    assert period_label(kind, after - timedelta(microseconds=1)) == label


def test_lifetime_and_unknown_labels() -> None:
    assert period_label("none", datetime(2026, 5, 1, tzinfo=UTC)) == LIFETIME
    assert period_dates(LIFETIME) == ("", "")
    assert period_dates("2026-13") is None and period_dates("someday") is None
    with pytest.raises(ValueError, match="not a budget period label"):
        period_bounds("2026-Q5")
    assert period_bounds("2026-Q4") == ("2026-10-01", "2027-01-01")
    assert period_bounds("2026-12") == ("2026-12-01", "2027-01-01")
