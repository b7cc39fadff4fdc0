"""A secure sum over twenty real node processes, two of them killed mid-session.

The federation is ``deploy/local_federation.py``'s: twenty ``tiaki-node
serve`` processes on loopback over mutual TLS, in zCDP, each pinning the
others' ledger keys. One secure count of clients by region is asked with the
product's :func:`coordinator.secure_question.ask_secure`, and two members are
killed with SIGKILL while it runs:

- one just before it is asked for its masked input: it shared its keys but
  never computed an input, so it charged nothing and the others' reveals
  remove its pairwise masks;
- one just after it returned its masked input, before the consistency round:
  it has charged, and its input is in the survivor list the others sign
  (Bonawitz et al.'s U3), so the sum includes it even though it cannot sign
  or reveal; the others' shares of its self mask take that mask off.

The session tolerates 20 // 10 = 2 dropouts (threshold 18) and releases the
sum of 19 inputs. What the nodes' ledgers say must match what the coordinator
says each charged, and their signed exports must audit clean.

The cost is ρ = 0.25, not 0.5: with 18 honest shares each member's share
alone (the worst case, every other member colluding) costs about 18·ρ, and the
local federation caps a session's worst case at 5 per query, so at ρ = 0.5
(worst case 9) every member refuses the masked-input round.
"""

from __future__ import annotations

import csv
import json
import signal
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import pytest

from coordinator.config import load_federation
from coordinator.fanout import Federation, coordinator_identity
from coordinator.mirror import MirrorLedger
from coordinator.results import NodeStatus
from coordinator.secure_question import ask_secure
from coordinator.secure_sum import SecureSum, SessionLink
from coordinator.secure_sum import run_session as real_run_session
from deploy import local_federation
from deploy.local_federation import RunningNgo
from node.cli.main import main as node_main
from node.config import CategoricalColumn, load_config
from node.exports import signing_key_path
from node.ledger import LedgerEntry, PrivacyLedger
from tests.conftest import Cli
from tiaki.budget import PrivacyDefinition
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.secagg.session import KeyAdvert, MaskedInput, Reveal, SealedShares, SessionParameters
from tiaki.signing import load_signing_key

N = 20
CLIENTS = 300  # per NGO: enough for a count by region, quick to import
RHO = Fraction(1, 4)
QUERY = Query(
    QueryKind.COUNT_CLIENTS, PrivacyCost(PrivacyDefinition.ZCDP, RHO), group_by=("region",)
)
KILLED_BEFORE = "ngo-e"  # killed before it is asked for its masked input
KILLED_AFTER = "ngo-m"  # killed after its masked input arrived, before consistency
KILL_WAIT = 10.0


def kill(node: RunningNgo) -> None:
    """SIGKILL, and wait until the process is gone: nothing of it runs any more."""
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(timeout=KILL_WAIT)


class KillingLink:
    """A member's real client whose node process is killed at one point of the session."""

    def __init__(self, node: RunningNgo, link: SessionLink, *, after_input: bool) -> None:
        self.node = node
        self.link = link
        self.after_input = after_input
        self.sent_input = False

    def advertise(self, params: SessionParameters) -> KeyAdvert:
        return self.link.advertise(params)

    def share_keys(
        self, params: SessionParameters, adverts: Sequence[KeyAdvert]
    ) -> Sequence[SealedShares]:
        return self.link.share_keys(params, adverts)

    def masked_input(
        self, params: SessionParameters, sealed: Sequence[SealedShares]
    ) -> MaskedInput:
        if not self.after_input:
            kill(self.node)  # asked for its input, it is already gone: the call fails
        masked = self.link.masked_input(params, sealed)
        self.sent_input = True
        if self.after_input:
            kill(self.node)  # its input has arrived (and it has charged); now it dies
        return masked

    def consistency(self, params: SessionParameters, survivors: Sequence[int]) -> str:
        return self.link.consistency(params, survivors)

    def unmask(
        self, params: SessionParameters, survivors: Sequence[int], signatures: Mapping[int, str]
    ) -> Reveal:
        return self.link.unmask(params, survivors, signatures)


def exact_clients_by_region(workdir: Path, nodes: list[RunningNgo]) -> dict[str, int]:
    """Distinct clients per region, pooled over ``nodes``, from the CSVs each NGO imported.

    The column names come from the node's own schema: its identifier is the
    privacy unit, and a client's region is the same on all their records.
    """
    schema = load_config(nodes[0].config).schema
    region = schema.columns["region"]
    assert isinstance(region, CategoricalColumn)
    seen: dict[str, set[str]] = {category: set() for category in region.categories}
    for node in nodes:
        with open(workdir / f"{node.spec.name}-clients.csv", newline="", encoding="utf-8") as f:
            for record in csv.DictReader(f):
                # Client ids carry each NGO's own prefix, but keep them apart anyway.
                seen[record["region"]].add(f"{node.spec.name}/{record[schema.identifier]}")
    return {category: len(ids) for category, ids in seen.items()}


def trusted_keys(nodes: list[RunningNgo], federation_file: Path, path: Path) -> Path:
    """Every party's public key from its own key file, as an evaluator would be given them."""
    lines = []
    for node in nodes:
        key = load_signing_key(signing_key_path(load_config(node.config)))
        lines.append(f'{node.spec.name}: "{key.public_text}"')
    config = load_federation(federation_file)
    coordinator = load_signing_key(config.signing_key_path)
    # Named as the nodes and the coordinator's export name it: its certificate's identity.
    lines.append(f'{coordinator_identity(config)}: "{coordinator.public_text}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def secure_entries(node: RunningNgo, query_id: str) -> list[LedgerEntry]:
    """The node's ledger entries for ``query_id`` that paid for a secure-sum input."""
    config = load_config(node.config)
    with PrivacyLedger.open(config.paths.ledger, config.policy, node_id=config.node_id) as ledger:
        entries = ledger.entries()
    return [e for e in entries if e.query_id == query_id and e.secure_session is not None]


def test_twenty_node_processes_release_a_secure_count_with_two_killed_mid_session(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "federation"
    nodes = local_federation.start(workdir, local_federation.specs_for(N, CLIENTS), secure=True)
    try:
        by_name = {node.spec.name: node for node in nodes}
        fed_file = local_federation.write_federation(workdir, nodes)
        config = load_federation(fed_file)
        links: dict[str, KillingLink] = {}

        def run_with_two_deaths(
            params: SessionParameters, members: Mapping[int, SessionLink]
        ) -> SecureSum:
            wrapped = dict(members)
            for member in params.members:
                if member.node_id in (KILLED_BEFORE, KILLED_AFTER):
                    link = KillingLink(
                        by_name[member.node_id],
                        wrapped[member.index],
                        after_input=member.node_id == KILLED_AFTER,
                    )
                    links[member.node_id] = link
                    wrapped[member.index] = link
            return real_run_session(params, wrapped)

        monkeypatch.setattr("coordinator.secure_question.run_session", run_with_two_deaths)
        with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
            answer = ask_secure(federation, QUERY, analyst=local_federation.ANALYST, mirror=mirror)

        assert set(links) == {KILLED_BEFORE, KILLED_AFTER}
        assert not links[KILLED_BEFORE].sent_input and links[KILLED_AFTER].sent_input
        assert by_name[KILLED_BEFORE].process.returncode == -signal.SIGKILL
        assert by_name[KILLED_AFTER].process.returncode == -signal.SIGKILL
        summary = answer.secure
        assert answer.released and summary is not None, summary
        assert (summary.size, summary.threshold, summary.colluders) == (N, N - 2, 0)
        # Round 2 is where the survivor list is fixed: the 19 inputs that arrived.
        # The node killed after sending its input is in it (its self mask is rebuilt
        # from the others' shares), so the total is over 19 nodes, not 18.
        assert summary.summed == N - 1
        assert set(summary.charges) == set(by_name) - {KILLED_BEFORE}

        outcomes = {o.node: o for o in answer.outcomes}
        before = outcomes[KILLED_BEFORE]
        # Not charged, not answered, and unreachable: decided by the error's type.
        assert before.charged is None and before.status is NodeStatus.UNREACHABLE, before
        assert before.reason.startswith("dropped out: "), before
        after = outcomes[KILLED_AFTER]
        assert after.status is NodeStatus.ANSWERED and after.charged == RHO, after
        assert "input summed" in after.reason
        for name, outcome in outcomes.items():
            if name != KILLED_BEFORE:
                assert outcome.charged == RHO, outcome

        # Every estimate within five half-widths of the exact pooled count of the
        # 19 summed nodes, computed from the records they imported.
        summed = [node for node in nodes if node.spec.name != KILLED_BEFORE]
        exact = exact_clients_by_region(workdir, summed)
        assert sum(exact.values()) == CLIENTS * len(summed)
        assert sorted(cell.group[0] for cell in answer.cells) == sorted(exact)
        for cell in answer.cells:
            truth = exact[cell.group[0]]
            assert cell.nodes == N - 1
            assert abs(cell.estimate - truth) < 5 * cell.half_width, (cell, truth)

        # The live nodes' signed ledgers, fetched through the coordinator, audit clean.
        live = [n for n in nodes if n.spec.name not in (KILLED_BEFORE, KILLED_AFTER)]
        exports = tmp_path / "ledgers"
        fetched = cli("ledger", "fetch", "--config", fed_file, "--out-dir", exports,
                      "--nodes", ",".join(n.spec.name for n in live))  # fmt: skip
        assert fetched.code == 0, fetched.out + fetched.err
        files = sorted(exports.iterdir())
        assert [p.name for p in files] == sorted(
            ["coordinator.jsonl", *(f"{n.spec.name}.jsonl" for n in live)]
        )
        keys = trusted_keys(nodes, fed_file, tmp_path / "trusted-keys.yaml")
        audit = cli("audit", "verify", *files, "--keys", keys, "--format", "json")
        doc = json.loads(audit.out)
        assert audit.code == 0, json.dumps(doc["findings"], indent=1)
        assert doc["errors"] == 0 and doc["keys_pinned"] is True, doc["findings"]
        # All it cannot reconcile is the coordinator's record of the two killed nodes.
        assert sorted((f["code"], f["message"].split("'")[1]) for f in doc["findings"]) == [
            ("node-not-given", KILLED_BEFORE),
            ("node-not-given", KILLED_AFTER),
        ], doc["findings"]

        # The killed nodes' ledgers, exported from their files as their NGOs would
        # (`tiaki-node ledger export`), complete the audit: what the coordinator says
        # they charged (one of them, nothing) is what their own ledgers say.
        for name in (KILLED_BEFORE, KILLED_AFTER):
            argv = ["ledger", "export", "--config", str(by_name[name].config)]
            assert node_main([*argv, "--out", str(exports / f"{name}.jsonl")]) == 0
        every = sorted(exports.iterdir())
        assert len(every) == N + 1
        complete = cli("audit", "verify", *every, "--keys", keys, "--format", "json")
        doc = json.loads(complete.out)
        assert complete.code == 0, json.dumps(doc["findings"], indent=1)
        assert doc["errors"] == doc["warnings"] == 0, doc["findings"]
    finally:
        local_federation.stop(nodes)

    # What each ledger holds for this question, read from its file after the processes
    # are gone: one secure charge of ρ at every node whose input arrived, none at the
    # node killed before it computed one.
    for node in nodes:
        entries = secure_entries(node, answer.query_id)
        if node.spec.name == KILLED_BEFORE:
            assert entries == [], entries
            continue
        assert len(entries) == 1, (node.spec.name, entries)
        (entry,) = entries
        assert entry.charge == RHO and entry.requested == RHO
        assert entry.kind == QueryKind.COUNT_CLIENTS.value
        assert entry.secure_session is not None
        assert entry.secure_session.session_id == summary.session_id
        assert (entry.privacy_map, entry.worst_case) == summary.charges[node.spec.name]
