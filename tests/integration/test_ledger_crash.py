"""SIGKILL a process that is charging the ledger; nothing it reported may be lost.

A child process charges in a loop and prints each entry's seq only after
``charge`` has returned (that is, after the commit). The test kills it at
random moments (seeded), reopens the file, and checks that it opens cleanly,
that every printed seq is there, and that the spending totals equal the exact
sum of the entries. (SIGKILL loses no OS buffers, so this tests atomicity and
recovery of the WAL, not power-loss durability, which ``synchronous=FULL``
covers.)
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from node.config import BudgetPolicy
from node.ledger import PrivacyLedger
from tiaki.budget import PrivacyDefinition

REPO = Path(__file__).resolve().parents[2]
BUDGET = {"limit": "100000", "period": "monthly", "lifetime_limit": "200000"}
AMOUNTS = [Fraction("0.001"), Fraction(0.0007), Fraction(1, 1024)]

CHILD = textwrap.dedent(
    """
    import sys
    from fractions import Fraction
    from pathlib import Path

    from node.config import BudgetPolicy
    from node.ledger import PrivacyLedger
    from tiaki.budget import PrivacyDefinition

    path, round_ = Path(sys.argv[1]), sys.argv[2]
    budget = BudgetPolicy.model_validate({budget!r})
    amounts = [Fraction("0.001"), Fraction(0.0007), Fraction(1, 1024)]
    ledger = PrivacyLedger(path, PrivacyDefinition.ZCDP, budget, Fraction(1))
    print("ready", flush=True)
    for i in range(1_000_000):
        stored, replayed = ledger.charge(
            identity="coord",
            query_id=f"r{{round_}}-{{i}}",
            analyst="ana",
            kind="count",
            canonical_query=f"count #{{i}}",
            requested=Fraction(1, 100),
            charge=amounts[i % 3],
            dataset_version="v1",
            response=f"answer {{round_}}-{{i}}".encode() * 20,
            privacy_map=amounts[i % 3],
            commitment_salt=b"s" * 32,
        )
        assert not replayed
        print(stored.seq, f"r{{round_}}-{{i}}", flush=True)
    """
).format(budget=BUDGET)


def _open(path: Path) -> PrivacyLedger:
    budget = BudgetPolicy.model_validate(BUDGET)
    return PrivacyLedger(path, PrivacyDefinition.ZCDP, budget, Fraction(1))


def _run_and_kill(script: Path, path: Path, round_: int, delay: float) -> list[tuple[int, str]]:
    child = subprocess.Popen(
        [sys.executable, str(script), str(path), str(round_)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line == "ready\n":
                ready.set()
            elif line.endswith("\n"):  # a line cut short by the kill was not reported
                lines.append(line)
        ready.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert ready.wait(30), "child never opened the ledger"
        time.sleep(delay)
        assert child.poll() is None, "child exited before it was killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
        reader.join(10)
    assert child.returncode == -signal.SIGKILL
    reported = []
    for line in lines:
        seq, query_id = line.split()
        reported.append((int(seq), query_id))
    return reported


@pytest.mark.timeout(120)
def test_sigkill_loses_no_reported_charge(tmp_path: Path) -> None:
    script = tmp_path / "charger.py"
    script.write_text(CHILD)
    path = tmp_path / "ledger.sqlite"
    rng = random.Random(20261125)
    reported: list[tuple[int, str]] = []
    for round_ in range(6):
        reported += _run_and_kill(script, path, round_, rng.uniform(0.01, 0.3))

        with _open(path) as ledger:  # opens cleanly after the kill
            ledger.verify()
            entries = ledger.entries()
            by_seq = {e.seq: e for e in entries}
            for seq, query_id in reported:
                assert seq in by_seq and by_seq[seq].query_id == query_id
            total = sum((e.charge for e in entries), Fraction(0))
            status = ledger.status()
            assert status.lifetime_spent == total
            assert sum((p.spent for p in status.periods), Fraction(0)) == total
            assert all(e.charge == AMOUNTS[int(e.query_id.split("-")[1]) % 3] for e in entries)
            # a retry of a reported query after the crash replays, costing nothing
            if reported:
                seq, query_id = reported[-1]
                i = int(query_id.split("-")[1])
                stored, replayed = ledger.charge(
                    identity="coord",
                    query_id=query_id,
                    analyst="ana",
                    kind="count",
                    canonical_query=f"count #{i}",
                    requested=Fraction(1, 100),
                    charge=Fraction(1, 100),
                    dataset_version="v1",
                    response=b"fresh noise",
                    privacy_map=Fraction(1, 100),
                    commitment_salt=b"s" * 32,
                )
                assert replayed and stored.seq == seq and stored.response != b"fresh noise"
                assert ledger.status().lifetime_spent == total

        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw.close()
    assert len(reported) > 20, "the child should have committed charges before being killed"
