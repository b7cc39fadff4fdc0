"""A node's ledger replayed against its own recorded policy.

The node enforces its budget when it charges; this module checks, from the
signed entries alone, that it did. Walking the entries in order it keeps the
policy and the budget period in force and the running totals, and checks for
every charge that:

- a policy and a period entry precede it, and it is charged in the period in
  force (a roll-over must be recorded by a ``period`` entry before the first
  charge of the new period), at a time inside that period's dates;
- it costs no more than was requested and no more than ``per_query_max``,
  and OpenDP's privacy map recorded beside it (entries since charges were made
  exact) is no more than the charge;
- its period's total, including it, stays within the policy's ``limit``; the
  total over all periods within ``lifetime_limit`` (if set); and its
  identity's total in the period within that identity's ``budget_cap`` (if set);
- its query id was not charged to the same identity before (replays are free).

A charge for a node's input to a secure sum (one with ``worst_case`` and
``secure_session``) is also checked against the ``secure_aggregation``
section of the policy in force: that there is one, under zcdp; that its
worst case is within ``worst_case_per_query``, and the total of every worst
case so far within ``worst_case_lifetime``; that the session had at least
``min_cohort`` members and assumed at least ``colluders`` colluders; and
that its own arithmetic holds: h = threshold − colluders, and
2·threshold > N + colluders.

Each period entry's label must have the shape the policy's period kind gives
("2026", "2026-Q4", "2026-11", or "lifetime" when the kind is "none") and the
dates that label implies.

A period's total is what the node itself counts: every charge made within the
period's dates, whatever label it was recorded under (after the policy's
period kind changes, the node regroups earlier charges by time; with one kind
throughout this is the same as summing by label). An identity's total in a
period is counted the same way, by time, as the node counts it against a cap.
"""

from __future__ import annotations

from bisect import bisect_left
from fractions import Fraction

from coordinator.audit.findings import Finding, error, warning
from coordinator.audit.ledgers import ParsedLedger, Placed, parse_time
from tiaki.budget import format_amount
from tiaki.ledger_records import ChargeRecord, PeriodRecord, PolicyRecord
from tiaki.periods import LABEL_SHAPES, period_dates


def _amount(value: Fraction) -> str:
    return format_amount(value)


class _NodeWalk:
    """The state in force while walking one node ledger's entries in order."""

    def __init__(self, ledger: ParsedLedger) -> None:
        self.ledger = ledger
        self.findings: list[Finding] = []
        self.policy: Placed[PolicyRecord] | None = None
        self.period: Placed[PeriodRecord] | None = None
        self.seen_periods: dict[str, int] = {}
        self.period_spent: dict[str, Fraction] = {}
        # Every charge so far by day (ISO date) with running totals, to sum a
        # period's charges by time: days[i] is the i-th charge's day and
        # running[i] the total of the charges before it.
        self.days: list[str] = []
        self.running: list[Fraction] = [Fraction(0)]
        # The same, per identity, for caps.
        self.identity_days: dict[str, list[str]] = {}
        self.identity_running: dict[str, list[Fraction]] = {}
        self.identity_spent: dict[tuple[str, str], Fraction] = {}
        self.lifetime_spent = Fraction(0)
        self.worst_case_spent = Fraction(0)
        self.charged: dict[tuple[str, str], int] = {}
        # A partial export read without the entries before it: the policy and
        # period in force at its start are unknown, so their absence is no
        # finding (the audit warns once that the earlier history went unchecked).
        self.complete = ledger.history_complete

    def fail(self, at: Placed[object], code: str, message: str) -> None:
        self.findings.append(error(at.export, at.seq, code, message))

    def on_policy(self, placed: Placed[PolicyRecord]) -> None:
        policy = placed.record
        if policy.period not in LABEL_SHAPES:
            self.findings.append(
                warning(
                    placed.export,
                    placed.seq,
                    "unknown-period-kind",
                    f"the policy's period kind {policy.period!r:.40} is not one of "
                    f"{', '.join(LABEL_SHAPES)}; its period labels cannot be checked",
                )
            )
        self.policy = placed

    def on_period(self, placed: Placed[PeriodRecord]) -> None:
        period = placed.record
        label = period.period
        if self.policy is None:
            if self.complete:
                self.fail(
                    placed, "period-before-policy", f"period {label!r:.40} began before any policy"
                )
        else:
            kind = self.policy.record.period
            shape = LABEL_SHAPES.get(kind)
            if shape is not None and not shape.fullmatch(label):
                self.fail(
                    placed,
                    "bad-period-label",
                    f"period {label!r:.40} is not a {kind} period label, but the policy in force "
                    f"(entry {self.policy.seq}) counts {kind}",
                )
        dates = period_dates(label)
        if dates is not None and dates != (period.start, period.end):
            self.fail(
                placed,
                "bad-period-dates",
                f"period {label} runs from {dates[0] or '-'} to {dates[1] or '-'}, but the "
                f"entry says {period.start or '-'} to {period.end or '-'}",
            )
        if label in self.seen_periods:
            self.findings.append(
                warning(
                    placed.export,
                    placed.seq,
                    "period-repeated",
                    f"period {label} began again (it first began at entry "
                    f"{self.seen_periods[label]}); its spending continues from before",
                )
            )
        self.seen_periods.setdefault(label, placed.seq)
        self.period = placed

    def on_charge(self, placed: Placed[ChargeRecord]) -> None:
        charge = placed.record
        what = f"query {charge.query_id!r:.60} by {charge.identity!r:.60}"
        key = (charge.identity, charge.query_id)
        if key in self.charged:
            self.fail(
                placed,
                "charged-twice",
                f"{what} was already charged at entry {self.charged[key]}; a repeated query id "
                "must replay its stored answer for free",
            )
        self.charged.setdefault(key, placed.seq)
        self._check_period(placed)
        if charge.charge > charge.requested:
            self.fail(
                placed,
                "charge-over-requested",
                f"{what} was charged {_amount(charge.charge)}, more than the "
                f"{_amount(charge.requested)} requested",
            )
        if charge.privacy_map is not None and charge.privacy_map > charge.charge:
            self.fail(
                placed,
                "map-over-charge",
                f"{what} was charged {_amount(charge.charge)}, but OpenDP's privacy map at the "
                f"noise it used is {_amount(charge.privacy_map)}: the release cost more than "
                "was paid",
            )
        self._add(placed)
        if charge.worst_case is not None:
            self._check_secure(placed, charge.worst_case)

    def _check_secure(self, placed: Placed[ChargeRecord], worst_case: Fraction) -> None:
        """A secure sum's charge against the policy's rules for secure sums."""
        session = placed.record.secure_session
        assert session is not None  # a record has both worst_case and session, or neither
        self.worst_case_spent += worst_case
        what = f"the input to secure sum {session.session_id}"
        n, threshold, colluders = session.size, session.threshold, session.colluders
        if session.honest != threshold - colluders:
            self.fail(
                placed,
                "secure-honest-miscounted",
                f"{what} counts {session.honest} honest shares, but a threshold of {threshold} "
                f"with {colluders} colluders leaves {threshold - colluders}",
            )
        if 2 * threshold <= n + colluders:
            self.fail(
                placed,
                "secure-threshold-unsafe",
                f"{what} had a threshold of {threshold} of {n} members with {colluders} "
                "colluders: a coordinator could show two survivor lists (it must be more than "
                f"{(n + colluders) / 2:g})",
            )
        if self.policy is None:
            return  # charge-before-policy, when the history is complete
        policy, where = self.policy.record, f"(policy entry {self.policy.seq})"
        rules = policy.secure_aggregation
        if policy.definition != "zcdp" or rules is None:
            self.fail(
                placed,
                "secure-without-policy",
                f"{what} was charged, but the policy in force {where} takes no part in secure "
                "sums" + ("" if rules is None else f" (it accounts in {policy.definition!r:.20})"),
            )
            return
        if worst_case > rules.worst_case_per_query:
            self.fail(
                placed,
                "over-worst-case-per-query",
                f"{what} was charged a worst case of {_amount(worst_case)}, more than the "
                f"worst-case per-query cap {_amount(rules.worst_case_per_query)} {where}",
            )
        if self.worst_case_spent > rules.worst_case_lifetime:
            self.fail(
                placed,
                "over-worst-case-lifetime",
                f"this worst case of {_amount(worst_case)} brings the worst-case total to "
                f"{_amount(self.worst_case_spent)}, over the worst-case lifetime cap "
                f"{_amount(rules.worst_case_lifetime)} {where}",
            )
        if n < rules.min_cohort:
            self.fail(
                placed,
                "secure-cohort-too-small",
                f"{what} had {n} members, fewer than the policy's min_cohort "
                f"{rules.min_cohort} {where}",
            )
        if colluders < rules.colluders:
            self.fail(
                placed,
                "secure-colluders-too-few",
                f"{what} assumed {colluders} colluders, fewer than the policy's "
                f"{rules.colluders} {where}: its aggregate charge counted too many honest shares",
            )

    def _check_period(self, placed: Placed[ChargeRecord]) -> None:
        label = placed.record.period
        if self.period is None:
            if not self.complete:
                return
            self.fail(
                placed,
                "charge-outside-period",
                f"charged in period {label!r:.40}, but no period entry began any period before it",
            )
            return
        current = self.period.record
        if label != current.period:
            self.fail(
                placed,
                "charge-outside-period",
                f"charged in period {label!r:.40}, but the period in force is {current.period} "
                f"(entry {self.period.seq}); a period entry must record a new period before "
                "its first charge",
            )
            return
        when = parse_time(placed.at)
        if current.start and current.end and when is not None:
            day = when.date().isoformat()
            if not current.start <= day < current.end:
                self.fail(
                    placed,
                    "charge-outside-period",
                    f"charged on {day}, outside period {current.period} "
                    f"({current.start} to {current.end})",
                )

    def _in_period(
        self, label: str, fallback: Fraction, days: list[str], running: list[Fraction]
    ) -> Fraction:
        """The spending so far (this charge included) counted against ``label``.

        ``days`` and ``running`` are the charges' days and running totals (of
        the whole ledger, or of one identity); ``fallback`` is what a label of
        no known shape counts (what was recorded under it).
        """
        dates = period_dates(label)
        if dates is None:
            return fallback
        if dates == ("", ""):
            return running[-1]
        # Times never go backwards (checked separately), so the days are sorted.
        first = bisect_left(days, dates[0])
        last = bisect_left(days, dates[1])
        return running[last] - running[first]

    def _add(self, placed: Placed[ChargeRecord]) -> None:
        charge = placed.record
        label, amount = charge.period, charge.charge
        self.period_spent[label] = self.period_spent.get(label, Fraction(0)) + amount
        when = parse_time(placed.at)
        day = when.date().isoformat() if when is not None else ""
        self.days.append(day)
        self.running.append(self.running[-1] + amount)
        who = (label, charge.identity)
        self.identity_spent[who] = self.identity_spent.get(who, Fraction(0)) + amount
        days = self.identity_days.setdefault(charge.identity, [])
        running = self.identity_running.setdefault(charge.identity, [Fraction(0)])
        days.append(day)
        running.append(running[-1] + amount)
        self.lifetime_spent += amount
        if self.policy is None:
            if self.complete:
                self.fail(placed, "charge-before-policy", "a charge before any policy entry")
            return
        policy, where = self.policy.record, f"(policy entry {self.policy.seq})"
        if amount > policy.per_query_max:
            self.fail(
                placed,
                "over-per-query-max",
                f"charged {_amount(amount)}, more than the per-query maximum "
                f"{_amount(policy.per_query_max)} {where}",
            )
        in_period = self._in_period(label, self.period_spent[label], self.days, self.running)
        if in_period > policy.limit:
            self.fail(
                placed,
                "over-period-limit",
                f"this charge of {_amount(amount)} brings period {label}'s spending to "
                f"{_amount(in_period)}, over its limit {_amount(policy.limit)} {where}",
            )
        if policy.lifetime_limit is not None and self.lifetime_spent > policy.lifetime_limit:
            self.fail(
                placed,
                "over-lifetime-limit",
                f"this charge of {_amount(amount)} brings lifetime spending to "
                f"{_amount(self.lifetime_spent)}, over the lifetime limit "
                f"{_amount(policy.lifetime_limit)} {where}",
            )
        cap = policy.cap_for(charge.identity)
        identity_in_period = self._in_period(label, self.identity_spent[who], days, running)
        if cap is not None and identity_in_period > cap:
            self.fail(
                placed,
                "over-identity-cap",
                f"this charge of {_amount(amount)} brings {charge.identity!r:.60}'s spending in "
                f"period {label} to {_amount(identity_in_period)}, over its cap "
                f"{_amount(cap)} {where}",
            )


def check_node_ledger(ledger: ParsedLedger) -> list[Finding]:
    """Every place a node's ledger breaks its own recorded policy (see the module docs)."""
    walk = _NodeWalk(ledger)
    for placed in ledger.entries:
        record = placed.record
        if isinstance(record, PolicyRecord):
            walk.on_policy(Placed(placed.export, placed.seq, placed.at, record))
        elif isinstance(record, PeriodRecord):
            walk.on_period(Placed(placed.export, placed.seq, placed.at, record))
        elif isinstance(record, ChargeRecord):
            walk.on_charge(Placed(placed.export, placed.seq, placed.at, record))
    return walk.findings
