"""The privacy ledger: exact, idempotent, race-free check-and-spend on a real SQLite file."""

from __future__ import annotations

import multiprocessing
import secrets
import shutil
import sqlite3
import threading
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from node.config import BudgetPolicy
from node.ledger import LedgerError, PrivacyLedger, StoredAnswer
from tiaki.budget import PrivacyDefinition, format_amount
from tiaki.errors import InsufficientBudgetError, QueryIdConflictError
from tiaki.ledger_records import ChargeRecord, parse_record

F = Fraction


class Clock:
    """A settable UTC clock for period tests."""

    def __init__(self, when: datetime) -> None:
        self.now = when

    def __call__(self) -> datetime:
        return self.now


def make(
    path: Path,
    limit: str = "1",
    period: str = "none",
    lifetime: str | None = None,
    per_query_max: str | None = None,
    definition: PrivacyDefinition = PrivacyDefinition.PURE,
    clock: Clock | None = None,
) -> PrivacyLedger:
    budget = BudgetPolicy.model_validate(
        {"limit": limit, "period": period, "lifetime_limit": lifetime}
    )
    pqm = F(per_query_max) if per_query_max else budget.limit
    if clock is None:
        return PrivacyLedger(path, definition, budget, pqm)
    return PrivacyLedger(path, definition, budget, pqm, clock=clock)


def spend(
    ledger: PrivacyLedger,
    qid: str,
    amount: Fraction,
    identity: str = "coord-a",
    query: str | None = None,
    response: bytes | None = None,
    requested: Fraction | None = None,
) -> tuple[StoredAnswer, bool]:
    return ledger.charge(
        identity=identity,
        query_id=qid,
        analyst="ana",
        kind="count",
        canonical_query=query if query is not None else f"count {qid}",
        requested=requested if requested is not None else amount,
        charge=amount,
        dataset_version="v1",
        response=response if response is not None else f"answer {qid}".encode(),
        privacy_map=amount,
        commitment_salt=secrets.token_bytes(32),
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


# ---------------------------------------------------------------- exact arithmetic


def test_ten_tenths_spend_exactly_one(path: Path) -> None:
    with make(path, limit="1") as ledger:
        for i in range(10):
            spend(ledger, f"q{i}", F("0.1"))
        status = ledger.status()
        assert status.current.spent == 1
        assert status.current.remaining == 0
        assert status.available == 0
        assert status.lifetime_spent == 1
        with pytest.raises(InsufficientBudgetError) as err:
            spend(ledger, "q10", F("0.1"))
        assert err.value.remaining == 0
        assert err.value.requested == F("0.1")
        assert len(ledger.entries()) == 10


def test_dyadic_charges_sum_exactly(path: Path) -> None:
    tenth = F(0.1)  # the float's exact value, a hair above 1/10
    assert tenth > F(1, 10)
    with make(path, limit="1") as ledger:
        for i in range(9):
            spend(ledger, f"q{i}", tenth)
        assert ledger.status().current.spent == 9 * tenth
        with pytest.raises(InsufficientBudgetError) as err:  # 10 * F(0.1) > 1
            spend(ledger, "q9", tenth)
        assert err.value.remaining == 1 - 9 * tenth
        spend(ledger, "q9", 1 - 9 * tenth)  # the exact remainder fits
        assert ledger.status().available == 0
    with make(path, limit="1") as ledger:
        entries = ledger.entries()
        assert sum((e.charge for e in entries), F(0)) == 1
        assert entries[0].charge == tenth
        assert entries[-1].requested == 1 - 9 * tenth
    raw = sqlite3.connect(path).execute("SELECT charge FROM entries WHERE seq = 1").fetchone()[0]
    assert raw == format_amount(tenth) and "e" not in raw


# ---------------------------------------------------------------- idempotency


def test_retry_returns_stored_bytes_without_new_charge(path: Path) -> None:
    with make(path) as ledger:
        first, replayed = spend(ledger, "q1", F("0.25"), response=b"\x00noise-1")
        assert not replayed and first.response == b"\x00noise-1"
        assert ledger.check("coord-a", "q1", "count q1", F("0.25")) == first
        again, replayed = spend(ledger, "q1", F("0.2"), response=b"fresh noise")
        assert replayed
        assert len(first.commitment_salt) == 32  # the same salt goes back with the replay
        assert again == StoredAnswer(
            "count q1", b"\x00noise-1", F("0.25"), first.seq, first.commitment_salt
        )
        assert ledger.status().current.spent == F("0.25")
        assert len(ledger.entries()) == 1


def test_replay_is_served_even_when_budget_is_gone(path: Path) -> None:
    with make(path, limit="0.5") as ledger:
        spend(ledger, "q1", F("0.5"))
        assert ledger.status().available == 0
        stored, replayed = spend(ledger, "q1", F("0.5"))
        assert replayed and stored.response == b"answer q1"


def test_same_id_different_query_conflicts(path: Path) -> None:
    with make(path) as ledger:
        spend(ledger, "q1", F("0.1"), query="count where a")
        with pytest.raises(QueryIdConflictError) as err:
            ledger.check("coord-a", "q1", "count where b", F("0.1"))
        assert err.value.query_id == "q1"
        with pytest.raises(QueryIdConflictError):
            spend(ledger, "q1", F("0.1"), query="count where b")
        assert ledger.status().current.spent == F("0.1")
        assert len(ledger.entries()) == 1


def test_identities_have_independent_ids(path: Path) -> None:
    with make(path) as ledger:
        for_a, _ = spend(ledger, "q1", F("0.1"), identity="a", query="same", response=b"for a")
        # b cannot fetch a's answer: same id and query is a fresh question for b
        assert ledger.check("b", "q1", "same", F("0.1")) is None
        stored, replayed = spend(ledger, "q1", F("0.1"), identity="b", query="same", response=b"b")
        assert not replayed and stored.response == b"b"
        # and b may use a's id for another query altogether
        spend(ledger, "q2", F("0.1"), identity="a", query="x")
        spend(ledger, "q2", F("0.1"), identity="b", query="y")
        assert ledger.check("a", "q1", "same", F("0.1")) == StoredAnswer(
            "same", b"for a", F("0.1"), 1, for_a.commitment_salt
        )
        assert stored.commitment_salt != for_a.commitment_salt
        assert ledger.status().current.spent == F("0.4")


# ---------------------------------------------------------------- refusals


def test_per_query_maximum_refused_and_nothing_changes(path: Path) -> None:
    with make(path, limit="1", per_query_max="0.3") as ledger:
        spend(ledger, "q0", F("0.2"))
        before = (ledger.status(), ledger.entries())
        with pytest.raises(InsufficientBudgetError) as checked:
            ledger.check("coord-a", "q1", "count q1", F("0.31"))
        with pytest.raises(InsufficientBudgetError) as charged:
            spend(ledger, "q1", F("0.1"), requested=F("0.31"))
        for err in (checked, charged):
            assert err.value.requested == F("0.31")
            assert err.value.remaining == F("0.3")
            assert err.value.limit == "per-query maximum"
        assert (ledger.status(), ledger.entries()) == before
        # the refused id stays free
        assert ledger.check("coord-a", "q1", "count q1", F("0.3")) is None


def test_remaining_budget_refused_with_amounts(path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, tzinfo=UTC))
    with make(path, limit="1", period="yearly", clock=clock) as ledger:
        spend(ledger, "q0", F("0.75"))
        before = (ledger.status(), ledger.entries())
        with pytest.raises(InsufficientBudgetError) as err:
            spend(ledger, "q1", F("0.3"))
        assert (err.value.requested, err.value.remaining) == (F("0.3"), F("0.25"))
        assert err.value.limit == "remaining budget for period 2026"
        assert "nothing was spent" in str(err.value)
        with pytest.raises(InsufficientBudgetError):
            ledger.check("coord-a", "q1", "count q1", F("0.3"))
        assert (ledger.status(), ledger.entries()) == before
        spend(ledger, "q1", F("0.25"))
        assert ledger.status().current.remaining == 0


def test_lifetime_label_when_period_is_none(path: Path) -> None:
    with make(path, limit="0.5") as ledger:
        spend(ledger, "a", F("0.25"))
        with pytest.raises(InsufficientBudgetError) as err:
            ledger.check("coord-a", "q", "count", F("0.3"))
        assert (err.value.remaining, err.value.limit) == (F("0.25"), "remaining lifetime budget")
        status = ledger.status()
        assert status.current.label == "lifetime" and status.current.end == ""
        assert status.current.start == datetime.now(UTC).date().isoformat()  # ledger creation
        assert [p.label for p in status.periods] == ["lifetime"]


def test_charge_above_requested_is_rejected(path: Path) -> None:
    with make(path) as ledger:
        with pytest.raises(ValueError, match="at most the requested"):
            spend(ledger, "q1", F("0.2"), requested=F("0.1"))
        with pytest.raises(ValueError, match="must be positive"):
            spend(ledger, "q1", F(0), requested=F("0.1"))
        assert ledger.entries() == [] and ledger.status().lifetime_spent == 0


def test_check_spends_nothing(path: Path) -> None:
    with make(path) as ledger:
        for _ in range(3):
            assert ledger.check("coord-a", "q1", "count", F("1")) is None
        assert ledger.status().lifetime_spent == 0 and ledger.entries() == []


# ---------------------------------------------------------------- concurrency


def test_threads_race_for_the_last_of_the_budget(path: Path) -> None:
    limit = F(1)
    amounts = [F("0.01"), F("0.03"), F(0.02), F("0.05")]
    with make(path, limit="1") as ledger:
        spend(ledger, "warm", F("0.5"))
        barrier = threading.Barrier(16)
        won: list[Fraction] = []
        refused: list[int] = []
        guard = threading.Lock()

        def worker(t: int) -> None:
            barrier.wait()
            for i in range(50):
                amount = amounts[(t + i) % len(amounts)]
                try:
                    _, replayed = spend(ledger, f"t{t}-{i}", amount)
                except InsufficientBudgetError:
                    with guard:
                        refused.append(1)
                    continue
                assert not replayed
                with guard:
                    won.append(amount)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status = ledger.status()
        assert refused, "the budget should have run out during the race"
        assert status.current.spent == F("0.5") + sum(won, F(0))
        assert status.current.spent <= limit
        assert status.available < min(amounts)  # nothing that fits was refused at the end
        assert len(ledger.entries()) == len(won) + 1
        ledger.verify()


def _process_worker(args: tuple[str, int]) -> list[str]:
    """Run in a spawned process: charge until refused, report what was charged."""
    file, worker = args
    won: list[str] = []
    with make(Path(file), limit="1") as ledger:
        for i in range(40):
            amount = F("0.01") if i % 2 else F(0.03)
            try:
                spend(ledger, f"p{worker}-{i}", amount)
            except InsufficientBudgetError:
                continue
            won.append(format_amount(amount))
    return won


def test_processes_race_on_the_same_file(path: Path) -> None:
    make(path, limit="1").close()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_process_worker, [(str(path), w) for w in range(4)])
    charged = [F(a) for won in results for a in won]
    with make(path, limit="1") as ledger:
        status = ledger.status()
        assert status.current.spent == sum(charged, F(0))
        assert status.current.spent <= 1
        assert status.available < F("0.01")  # 160 attempts of >= 0.01 exhaust 1
        assert len(ledger.entries()) == len(charged)
        ledger.verify()


# ---------------------------------------------------------------- periods


def test_yearly_rollover_with_lifetime_cap(path: Path) -> None:
    clock = Clock(datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    with make(path, limit="1", period="yearly", lifetime="1.5", clock=clock) as ledger:
        spend(ledger, "a", F("1"))
        with pytest.raises(InsufficientBudgetError) as err:
            spend(ledger, "b", F("0.1"))
        assert err.value.limit == "remaining budget for period 2025"
        clock.now = datetime(2026, 1, 1, tzinfo=UTC)
        status = ledger.status()
        assert status.current.label == "2026" and status.current.spent == 0
        assert (status.current.start, status.current.end) == ("2026-01-01", "2027-01-01")
        assert status.available == F("0.5")  # the lifetime cap binds
        with pytest.raises(InsufficientBudgetError) as err:
            spend(ledger, "b", F("0.6"))
        assert (err.value.remaining, err.value.limit) == (F("0.5"), "remaining lifetime budget")
        spend(ledger, "b", F("0.5"))
        clock.now = datetime(2027, 6, 1, tzinfo=UTC)
        with pytest.raises(InsufficientBudgetError) as err:
            spend(ledger, "c", F("0.01"))
        assert err.value.limit == "remaining lifetime budget" and err.value.remaining == 0
        status = ledger.status()
        assert status.lifetime_spent == F("1.5") and status.lifetime_limit == F("1.5")
        assert [(p.label, p.spent) for p in status.periods] == [("2025", 1), ("2026", F("0.5"))]
        assert [e.period for e in ledger.entries()] == ["2025", "2026"]


def test_monthly_rollover(path: Path) -> None:
    clock = Clock(datetime(2026, 10, 15, tzinfo=UTC))
    with make(path, limit="0.3", period="monthly", clock=clock) as ledger:
        for month in (10, 11, 12):
            clock.now = datetime(2026, month, 15, tzinfo=UTC)
            spend(ledger, f"m{month}a", F("0.2"))
            spend(ledger, f"m{month}b", F("0.1"))
            with pytest.raises(InsufficientBudgetError):
                spend(ledger, f"m{month}c", F("0.1"))
        clock.now = datetime(2027, 1, 1, tzinfo=UTC)
        status = ledger.status()
        assert status.current.label == "2027-01" and status.available == F("0.3")
        assert status.lifetime_spent == F("0.9")
        assert [(p.label, p.start, p.end, p.spent) for p in status.periods] == [
            ("2026-10", "2026-10-01", "2026-11-01", F("0.3")),
            ("2026-11", "2026-11-01", "2026-12-01", F("0.3")),
            ("2026-12", "2026-12-01", "2027-01-01", F("0.3")),
        ]


def test_quarterly_labels_and_charge_counts_at_commit_time(path: Path) -> None:
    clock = Clock(datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC))
    with make(path, limit="1", period="quarterly", clock=clock) as ledger:
        spend(ledger, "early", F("0.9"))
        with pytest.raises(InsufficientBudgetError):
            ledger.check("coord-a", "late", "count late", F("0.5"))
        clock.now = datetime(2026, 10, 1, tzinfo=UTC)  # the answer is computed across midnight
        spend(ledger, "late", F("0.5"))
        assert [e.period for e in ledger.entries()] == ["2026-Q3", "2026-Q4"]
        current = ledger.status().current
        assert (current.label, current.start, current.end) == (
            "2026-Q4",
            "2026-10-01",
            "2027-01-01",
        )
        assert current.spent == F("0.5")


# ---------------------------------------------------------------- the file


def test_reopen_gives_same_status(path: Path) -> None:
    clock = Clock(datetime(2026, 3, 3, tzinfo=UTC))
    with make(path, limit="2", period="monthly", lifetime="5", clock=clock) as ledger:
        spend(ledger, "a", F("0.125"))
        clock.now = datetime(2026, 4, 3, tzinfo=UTC)
        spend(ledger, "b", F(0.7))
        before, entries = ledger.status(), ledger.entries()
    with make(path, limit="2", period="monthly", lifetime="5", clock=clock) as ledger:
        assert ledger.status() == before
        assert ledger.entries() == entries
        assert spend(ledger, "b", F(0.7))[1] is True  # stored answers survive too


def test_definition_mismatch_is_refused(path: Path) -> None:
    with make(path, definition=PrivacyDefinition.PURE) as ledger:
        spend(ledger, "a", F("0.1"))
    with pytest.raises(LedgerError, match="privacy_definition 'zcdp'"):
        make(path, definition=PrivacyDefinition.ZCDP)
    with make(path, definition=PrivacyDefinition.PURE) as ledger:
        assert ledger.status().lifetime_spent == F("0.1")


def test_changing_the_period_regroups_spending_by_commit_time(path: Path) -> None:
    clock = Clock(datetime(2026, 2, 10, tzinfo=UTC))
    with make(path, limit="1", period="yearly", clock=clock) as ledger:
        spend(ledger, "feb", F("0.25"))
        clock.now = datetime(2026, 3, 10, tzinfo=UTC)
        spend(ledger, "mar", F("0.5"))
    with make(path, limit="0.6", period="monthly", clock=clock) as ledger:
        status = ledger.status()
        assert [(p.label, p.spent) for p in status.periods] == [
            ("2026-02", F("0.25")),
            ("2026-03", F("0.5")),
        ]
        assert status.available == F("0.1")
        assert [e.period for e in ledger.entries()] == ["2026", "2026"]  # history is kept
        ledger.verify()


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    # A newer schema and a file that is not SQLite: tests/unit/test_chained_ledger.py.
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(LedgerError, match="not a tiaki ledger"):
        make(other)


def test_closed_ledger_refuses_use(path: Path) -> None:
    ledger = make(path)
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.status()


def test_file_is_wal_with_full_sync(path: Path) -> None:
    with make(path) as ledger:
        spend(ledger, "a", F("0.1"))
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_per_identity_caps_hold_under_concurrency(path: Path) -> None:
    ledger = make(path, limit="10")
    caps = {"coord-a": F("0.5"), "coord-b": F("1.2")}
    step = F("0.1")
    granted: dict[str, list[Fraction]] = {name: [] for name in caps}
    lock = threading.Lock()

    def worker(identity: str, start: int) -> None:
        for i in range(start, start + 10):
            try:
                ledger.charge(
                    identity=identity,
                    query_id=f"{identity}-{i}",
                    analyst="ana",
                    kind="count",
                    canonical_query=f"count {i}",
                    requested=step,
                    charge=step,
                    dataset_version="v1",
                    response=b"x",
                    privacy_map=step,
                    commitment_salt=secrets.token_bytes(32),
                    identity_cap=caps[identity],
                )
            except InsufficientBudgetError as exc:  # over the cap: one of two right outcomes
                assert identity in exc.limit  # noqa: PT017
                continue
            with lock:
                granted[identity].append(step)

    threads = [
        threading.Thread(target=worker, args=(name, 100 * t)) for name in caps for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, cap in caps.items():
        assert sum(granted[name], Fraction(0)) == cap  # exactly as many 0.1s as fit
    assert ledger.status().lifetime_spent == sum(caps.values(), Fraction(0))
    with pytest.raises(InsufficientBudgetError) as info:
        ledger.check("coord-a", "new", "count new", step, identity_cap=caps["coord-a"])
    assert info.value.remaining == 0


def test_racing_across_a_yearly_boundary_never_overspends_either_year(path: Path) -> None:
    clock = Clock(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    ledger = make(path, limit="1", period="yearly", lifetime="10", clock=clock)
    step = F("0.15")
    granted: list[tuple[str, Fraction]] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(20):
            if w == 0 and i == 5:
                clock.now = datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)  # midnight, mid-race
            try:
                stored, _ = spend(ledger, f"w{w}-{i}", step)
            except InsufficientBudgetError:
                continue
            with lock:
                granted.append((f"w{w}-{i}", stored.charge))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = ledger.status()
    by_period = {p.label: p.spent for p in status.periods}
    assert set(by_period) <= {"2026", "2027"}
    assert all(spent <= 1 for spent in by_period.values())  # neither year overspent
    assert by_period.get("2027") == 6 * step  # the new year filled exactly as far as it can
    assert status.lifetime_spent == sum((c for _, c in granted), Fraction(0))
    ledger.verify()


# ---------------------------------------------------------------- schema 2 ledgers

SCHEMA2_LEDGER = Path(__file__).resolve().parents[1] / "data" / "ledger-schema2.sqlite"


def test_a_schema_2_ledger_keeps_its_history_and_charges_exactly_from_then_on(
    tmp_path: Path,
) -> None:
    # Written by the release before exact charges: two entries charged OpenDP's map,
    # chained with a bare response_sha256.
    path = tmp_path / "ledger.sqlite"
    shutil.copyfile(SCHEMA2_LEDGER, path)
    with make(path, limit="5", period="yearly", per_query_max="1") as ledger:
        ledger.verify()
        old = ledger.entries()
        assert [e.charge for e in old] == [F(7205759403792793, 72057594037927936), F("0.25")]
        assert [e.privacy_map for e in old] == [None, None]
        assert [(e.worst_case, e.secure_session) for e in old] == [(None, None)] * 2
        stored, replayed = spend(ledger, "old-0", F("0.1"), query="count old 0")
        assert replayed and stored.response == b"old answer 0" and stored.commitment_salt == b""
        spend(ledger, "new", F("0.1"))
        ledger.verify()  # old entries by their hash, the new one by its commitment
        charges = [r for r in map(parse_record, ledger.chain()[1]) if isinstance(r, ChargeRecord)]
    assert [c.response_sha256 is not None for c in charges] == [True, True, False]
    assert charges[-1].response_commitment and charges[-1].privacy_map is not None
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == ("4",)  # through schema 3 to this release's
