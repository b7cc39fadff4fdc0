"""``tiaki audit verify`` against tampered exports: each case fails and names the entry.

The federation's ledgers are real chains signed with real keys (see
``audit_ledgers``). Each test changes one export the way an attacker, a
careless operator or a buggy writer could, then checks that verification
fails (exit 5) and that a finding points at the entry where the change is.
Changes made by someone holding the node's own key leave a self-consistent
export; those must be caught by comparing with an earlier export (``--since``)
or with the coordinator's ledger, and the tests show the export alone passes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.audit_ledgers import (
    EXPORTED_AT,
    Federation,
    at,
    edit_lines,
    federation,
    rechain,
    run_audit,
    verify_json,
    with_body,
)
from tiaki.chain import ChainEntry
from tiaki.ledger_records import SigningKeyRecord
from tiaki.signing import create_signing_key

Records = list[dict[str, Any]]


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return federation(tmp_path / "keys")


def _seq(fed: Federation, query_id: str) -> int:
    """Entry number of ngo-a's charge for ``query_id``."""
    return fed.ngo_a.seq_of(lambda e: e.type == "charge" and e.body["query_id"] == query_id)


def _entry_line(records: Records, seq: int) -> int:
    return next(i for i, r in enumerate(records) if r["record"] == "entry" and r["seq"] == seq)


def _integrity_seqs(run: Any) -> set[int | None]:
    return {f["seq"] for f in run.findings() if f["code"] == "integrity"}


def test_the_untouched_federation_verifies(capsys: Any, fed: Federation, tmp_path: Path) -> None:
    exports = fed.export_all(tmp_path)
    run = verify_json(capsys, *exports, "--keys", fed.keys_file(tmp_path / "keys.yaml"))
    assert run.code == 0
    assert run.findings("error") == []
    assert run.findings("warning") == []


def test_an_edited_charge_is_named(capsys: Any, fed: Federation, tmp_path: Path) -> None:
    seq = _seq(fed, "q3")
    path = fed.ngo_a.export(tmp_path / "a.jsonl")

    def lower(records: Records) -> Records:
        records[_entry_line(records, seq)]["body"]["charge"] = "0.25"
        return records

    run = verify_json(capsys, edit_lines(path, lower))
    assert run.code == 5
    assert _integrity_seqs(run) == {seq}
    assert any("altered" in f["message"] for f in run.findings())


def test_a_deleted_entry_is_named(capsys: Any, fed: Federation, tmp_path: Path) -> None:
    seq = _seq(fed, "q2")
    path = fed.ngo_a.export(tmp_path / "a.jsonl")

    def delete(records: Records) -> Records:
        del records[_entry_line(records, seq)]
        return records

    run = verify_json(capsys, edit_lines(path, delete))
    assert run.code == 5
    # The chain breaks at the entry after the hole: it is numbered wrongly and links to
    # an entry that is not there.
    assert _integrity_seqs(run) == {seq + 1}


def test_two_reordered_entries_are_named(capsys: Any, fed: Federation, tmp_path: Path) -> None:
    seq = _seq(fed, "q2")
    path = fed.ngo_a.export(tmp_path / "a.jsonl")

    def swap(records: Records) -> Records:
        i = _entry_line(records, seq)
        records[i], records[i + 1] = records[i + 1], records[i]
        return records

    run = verify_json(capsys, edit_lines(path, swap))
    assert run.code == 5
    assert {seq, seq + 1} <= _integrity_seqs(run)
    assert None not in _integrity_seqs(run)  # the signature itself still holds


def test_a_cut_tail_without_a_new_signature_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    last = fed.ngo_a.entries[-1].seq
    path = fed.ngo_a.export(tmp_path / "a.jsonl")

    def cut(records: Records) -> Records:
        return [r for r in records if not (r["record"] == "entry" and r["seq"] > last - 2)]

    run = verify_json(capsys, edit_lines(path, cut))
    assert run.code == 5
    assert _integrity_seqs(run) == {last - 2}
    assert any("promises entries up to" in f["message"] for f in run.findings())


def test_a_cut_tail_re_signed_by_the_node_needs_the_earlier_export(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    earlier = fed.ngo_a.export(tmp_path / "earlier.jsonl", exported_at=at("2026-04-02", "12:00"))
    entries = fed.ngo_a.entries
    cut = fed.ngo_a.export(tmp_path / "cut.jsonl", entries=entries[:-2])

    alone = verify_json(capsys, cut)
    assert alone.code == 0  # on its own the export is consistent: that is the point

    run = verify_json(capsys, cut, "--since", earlier)
    assert run.code == 5
    last = entries[-1].seq
    assert ("truncated", "cut.jsonl", last - 1) in run.where()
    [finding] = [f for f in run.findings() if f["code"] == "truncated"]
    assert f"ends at entry {last - 2}" in finding["message"]
    assert f"reaching entry {last}" in finding["message"]


def test_an_entry_spliced_in_from_another_ledger_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    # ngo-b's q1 charge has the same number as ngo-a's, and is properly chained and
    # signed in its own ledger; moved into ngo-a's export and signed by ngo-b's key.
    seq = _seq(fed, "q1")
    foreign = next(e for e in fed.ngo_b.entries if e.seq == seq)
    assert foreign.type == "charge"
    entries = [foreign if e.seq == seq else e for e in fed.ngo_a.entries]
    path = fed.ngo_a.export(tmp_path / "a.jsonl", entries=entries, key=fed.ngo_b.key)
    keys = fed.keys_file(tmp_path / "keys.yaml")

    run = verify_json(capsys, path, "--keys", keys)
    assert run.code == 5
    assert seq in _integrity_seqs(run)
    assert ("key-not-trusted", "a.jsonl", None) in run.where()
    assert ("key-not-recorded", "a.jsonl", 2) in run.where()


def test_a_forked_history_re_signed_by_the_node_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    earlier = fed.ngo_a.export(tmp_path / "earlier.jsonl", exported_at=at("2026-04-02", "12:00"))
    seq = _seq(fed, "q3")
    # Same prefix, then a different continuation: q3 made cheaper, everything after
    # re-linked, and the whole signed with the node's own key.
    changed = [with_body(e, charge="0.25") if e.seq == seq else e for e in fed.ngo_a.entries]
    forked = fed.ngo_a.export(
        tmp_path / "forked.jsonl", entries=rechain(fed.ngo_a.ledger_id, changed)
    )

    assert verify_json(capsys, forked).code == 0

    run = verify_json(capsys, forked, "--since", earlier)
    assert run.code == 5
    assert ("forked", "forked.jsonl", seq) in run.where()
    [finding] = [f for f in run.findings() if f["code"] == "forked"]
    assert f"at entry {seq}" in finding["message"]


def test_a_rewritten_charge_is_also_caught_by_the_coordinator_ledger(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    seq = _seq(fed, "q3")
    changed = [with_body(e, charge="0.25") if e.seq == seq else e for e in fed.ngo_a.entries]
    forked = fed.ngo_a.export(
        tmp_path / "ngo-a.jsonl", entries=rechain(fed.ngo_a.ledger_id, changed)
    )
    (tmp_path / "honest").mkdir()
    _, b, k = fed.export_all(tmp_path / "honest")

    run = verify_json(capsys, forked, b, k)
    assert run.code == 5
    assert ("node-under-reports", "ngo-a.jsonl", seq) in run.where()


def test_an_old_export_presented_as_current_is_a_replay(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    entries = fed.ngo_a.entries
    old = fed.ngo_a.export(
        tmp_path / "old.jsonl", entries=entries[:-2], exported_at=at("2026-04-01", "12:00")
    )
    newer = fed.ngo_a.export(tmp_path / "newer.jsonl", exported_at=EXPORTED_AT)

    assert verify_json(capsys, old).code == 0

    run = verify_json(capsys, old, "--since", newer)
    assert run.code == 5
    assert ("replayed-export", "old.jsonl", None) in run.where()
    assert ("truncated", "old.jsonl", entries[-2].seq) in run.where()
    replay = next(f for f in run.findings() if f["code"] == "replayed-export")
    assert "older export presented as current" in replay["message"]


def test_an_export_re_signed_by_another_key_fails_against_trusted_keys(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    keys = fed.keys_file(tmp_path / "keys.yaml")
    stranger = create_signing_key(tmp_path / "stranger.key")
    path = fed.ngo_a.export(tmp_path / "a.jsonl", key=stranger)

    run = verify_json(capsys, path, "--keys", keys)
    assert run.code == 5
    assert _integrity_seqs(run) == set()  # the forger's own signature is valid
    assert ("key-not-trusted", "a.jsonl", None) in run.where()
    # Even without trusted keys the key is not the one the chain records.
    assert ("key-not-recorded", "a.jsonl", 2) in verify_json(capsys, path).where()


def test_a_subject_missing_from_the_keys_file_fails(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f'ngo-b-id: "{fed.ngo_b.key.public_text}"\n', encoding="utf-8")
    path = fed.ngo_a.export(tmp_path / "a.jsonl")
    run = verify_json(capsys, path, "--keys", keys)
    assert run.code == 5
    assert run.where() == {("key-not-trusted", "a.jsonl", None)}


def test_without_trusted_keys_the_audit_says_what_it_trusted(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    run = verify_json(capsys, fed.ngo_a.export(tmp_path / "a.jsonl"))
    assert run.code == 0
    assert ("keys-not-pinned", "", None) in run.where("warning")


def test_a_header_edited_after_signing_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    path = fed.ngo_a.export(tmp_path / "a.jsonl")

    def raise_limit(records: Records) -> Records:
        records[0]["policy"]["limit"] = "100"
        return records

    run = verify_json(capsys, edit_lines(path, raise_limit))
    assert run.code == 5
    assert any(
        f["code"] == "integrity" and f["seq"] is None and "header was changed" in f["message"]
        for f in run.findings()
    )


def test_a_header_naming_another_node_is_named(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    path = fed.ngo_a.export(tmp_path / "a.jsonl", subject="ngo-z")
    run = verify_json(capsys, path)
    policy_seq = fed.ngo_a.seq_of(lambda e: e.type == "policy")
    assert ("wrong-subject", "a.jsonl", policy_seq) in run.where()


def test_a_replaced_history_is_named(capsys: Any, fed: Federation, tmp_path: Path) -> None:
    earlier = fed.ngo_a.export(tmp_path / "earlier.jsonl", exported_at=at("2026-04-02", "12:00"))
    fresh = federation(tmp_path / "fresh-keys")  # a new ledger for the same node id
    current = fresh.ngo_a.export(tmp_path / "current.jsonl")
    run = verify_json(capsys, current, "--since", earlier)
    assert run.code == 5
    assert ("history-replaced", "current.jsonl", None) in run.where()


def _rotate(fed: Federation, tmp_path: Path, record_it: bool) -> tuple[Path, Path]:
    earlier = fed.ngo_a.export(tmp_path / "earlier.jsonl", exported_at=at("2026-04-02", "12:00"))
    new_key = create_signing_key(tmp_path / "new.key")
    if record_it:
        fed.ngo_a.add(SigningKeyRecord(new_key.public_text), at("2026-04-02", "13:00"))
    current = fed.ngo_a.export(tmp_path / "current.jsonl", key=new_key)
    return earlier, current


def test_a_key_change_recorded_in_the_chain_is_accepted(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    earlier, current = _rotate(fed, tmp_path, record_it=True)
    run = verify_json(capsys, current, "--since", earlier)
    assert run.code == 0, run.findings()


def test_an_unrecorded_key_change_is_named(capsys: Any, fed: Federation, tmp_path: Path) -> None:
    earlier, current = _rotate(fed, tmp_path, record_it=False)
    run = verify_json(capsys, current, "--since", earlier)
    assert ("key-changed", "current.jsonl", None) in run.where()
    assert ("key-not-recorded", "current.jsonl", 2) in run.where()


# ---------------------------------------------------------------- partial exports


def _tail(fed: Federation, first: int) -> list[ChainEntry]:
    return [e for e in fed.ngo_a.entries if e.seq >= first]


def test_a_partial_export_alone_warns_that_history_went_unchecked(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    first = _seq(fed, "q3")
    path = fed.ngo_a.export(tmp_path / "tail.jsonl", entries=_tail(fed, first))
    run = verify_json(capsys, path)
    assert run.code == 0, run.findings()
    assert ("history-unchecked", "tail.jsonl", None) in run.where("warning")


def test_a_partial_export_is_checked_against_an_earlier_export_as_its_anchor(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    first = _seq(fed, "q3")
    earlier = fed.ngo_a.export(
        tmp_path / "earlier.jsonl",
        entries=[e for e in fed.ngo_a.entries if e.seq < first],
        exported_at=at("2026-03-31", "00:00"),
    )
    tail = fed.ngo_a.export(tmp_path / "tail.jsonl", entries=_tail(fed, first))
    run = verify_json(capsys, tail, "--since", earlier)
    assert run.code == 0, run.findings()
    assert "history-unchecked" not in {f["code"] for f in run.findings("warning")}


def test_a_partial_export_with_the_wrong_anchor_is_a_fork(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    first = _seq(fed, "q3")
    earlier = fed.ngo_a.export(
        tmp_path / "earlier.jsonl",
        entries=[e for e in fed.ngo_a.entries if e.seq < first],
        exported_at=at("2026-03-31", "00:00"),
    )
    # History rewritten from entry 5 on, then only its tail exported.
    rewritten = rechain(
        fed.ngo_a.ledger_id,
        [with_body(e, analyst="someone") if e.seq == 5 else e for e in fed.ngo_a.entries],
    )
    tail = fed.ngo_a.export(
        tmp_path / "tail.jsonl", entries=[e for e in rewritten if e.seq >= first]
    )
    run = verify_json(capsys, tail, "--since", earlier)
    assert run.code == 5
    [fork] = [f for f in run.findings() if f["code"] == "forked"]
    assert fork["seq"] == first - 1
    assert "at or before" in fork["message"]


# ---------------------------------------------------------------- unusable input


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("hello\n"), "not valid JSON"),
        (lambda p: p.write_text('{"record": "header"}\n'), "not a tiaki ledger export"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_an_unusable_export_stops_the_audit_with_exit_2(
    capsys: Any, tmp_path: Path, write: Callable[[Path], object], expected: str
) -> None:
    path = tmp_path / "export.jsonl"
    write(path)
    run = run_audit(capsys, "verify", path)
    assert run.code == 2
    assert expected in run.error_line()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "maps each subject"),
        ("ngo-a: [1, 2\n", "not valid YAML"),
        ("ngo-a: 42\n", "must be text"),
        ('ngo-a: "ed25519:not-base64!"\n', "not a valid Ed25519 public key"),
        ('ngo-a: "rsa:AAAA"\n', "ed25519:<base64>"),
    ],
)
def test_a_bad_keys_file_stops_the_audit_with_exit_2(
    capsys: Any, fed: Federation, tmp_path: Path, text: str, expected: str
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(text, encoding="utf-8")
    run = run_audit(capsys, "verify", fed.ngo_a.export(tmp_path / "a.jsonl"), "--keys", keys)
    assert run.code == 2
    assert expected in run.error_line()
    assert "keys.yaml" in run.error_line()
