"""The secure-sum protocol end to end in one process: real node participants, real session
files, the coordinator's driver, and a coordinator that cheats.

The nodes' contributions here are exact (γ·x without noise), so a sum that is
right is right to the last unit; noise shares are tested on their own
(test_distributed_noise). Every attack is one the protocol must refuse or
make harmless, with nothing charged that is not counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.secure_sum import SessionAbortedError, new_session, run_session
from node.config import CoordinatorGrant
from node.secure_sessions import SessionStore
from node.secure_sum import Contribution, SecureSumParticipant, SecureSumRules
from tiaki.budget import PrivacyDefinition
from tiaki.errors import NodeUnreachableError
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.session import (
    ComponentShare,
    KeyAdvert,
    MaskedInput,
    Member,
    Reveal,
    SealedShares,
    SessionParameters,
    survivors_message,
)
from tiaki.signing import SigningKey, create_signing_key

QUERY = Query(QueryKind.COUNT, PrivacyCost(PrivacyDefinition.ZCDP, Fraction(1, 2)))
COORDINATOR = "msd-coordinator"
GAMMA = 4
CELLS = 5
NOW = 1_900_000_000.0


@dataclasses.dataclass
class Node:
    """One node: its key, its session file, its participant, and what it contributed."""

    node_id: str
    key: SigningKey
    store_path: Path
    values: np.ndarray
    calls: int = 0
    participant: SecureSumParticipant | None = None

    def contribute(
        self, params: SessionParameters, identity: str, grant: CoordinatorGrant | None
    ) -> Contribution:
        self.calls += 1  # stands for the ledger charge: once per node and session
        return Contribution(self.values * GAMMA, (ComponentShare("count", CELLS, 2.5),))

    def open(
        self, peers: Mapping[str, str], now: float = NOW, **rules: int
    ) -> SecureSumParticipant:
        self.participant = SecureSumParticipant(
            self.node_id,
            self.key,
            SecureSumRules(
                peers={k: v for k, v in peers.items() if k != self.node_id},
                min_cohort=rules.get("min_cohort", 3),
                colluders=rules.get("colluders", 0),
            ),
            SessionStore(self.store_path),
            self.contribute,
            clock=lambda: now,
        )
        return self.participant


class Link:
    """The coordinator's link to one node, in process; ``fail_at`` makes it drop out there."""

    def __init__(self, node: Node, fail_at: str = "") -> None:
        self.node = node
        self.fail_at = fail_at

    @property
    def p(self) -> SecureSumParticipant:
        assert self.node.participant is not None
        return self.node.participant

    def _maybe_fail(self, round_name: str) -> None:
        if self.fail_at == round_name:
            raise NodeUnreachableError(f"{self.node.node_id} is unreachable")

    def advertise(self, params: SessionParameters) -> KeyAdvert:
        self._maybe_fail("advertise")
        return self.p.advertise(params, COORDINATOR)

    def share_keys(
        self, params: SessionParameters, adverts: Sequence[KeyAdvert]
    ) -> Sequence[SealedShares]:
        self._maybe_fail("share-keys")
        return self.p.share_keys(params, COORDINATOR, adverts)

    def masked_input(
        self, params: SessionParameters, sealed: Sequence[SealedShares]
    ) -> MaskedInput:
        self._maybe_fail("masked-input")
        return self.p.masked_input(params, COORDINATOR, sealed)

    def consistency(self, params: SessionParameters, survivors: Sequence[int]) -> str:
        self._maybe_fail("consistency")
        return self.p.consistency(params, COORDINATOR, survivors)

    def unmask(
        self, params: SessionParameters, survivors: Sequence[int], signatures: Mapping[int, str]
    ) -> Reveal:
        self._maybe_fail("unmask")
        return self.p.unmask(params, COORDINATOR, survivors, signatures)


@pytest.fixture
def nodes(tmp_path: Path) -> list[Node]:
    rng = np.random.default_rng(11)
    made = [
        Node(
            f"ngo-{i}",
            create_signing_key(tmp_path / f"ngo-{i}.key"),
            tmp_path / f"ngo-{i}-sessions.sqlite",
            rng.integers(0, 1000, CELLS, dtype=np.int64),
        )
        for i in range(1, 7)
    ]
    peers = {n.node_id: n.key.public_text for n in made}
    for n in made:
        n.open(peers)
    return made


def session(nodes: Sequence[Node], **changes: object) -> SessionParameters:
    params = new_session(
        "q-secure-1",
        QUERY,
        [Member(i, n.node_id, n.key.public_text) for i, n in enumerate(nodes, start=1)],
        threshold=4,
        colluders=1,
        scale_factors=(GAMMA,),
        share_scales=(2.5,),
        not_after=int(NOW) + 60,
    )
    return dataclasses.replace(params, **changes)  # type: ignore[arg-type]


def links(nodes: Sequence[Node], fail: Mapping[int, str] | None = None) -> dict[int, Link]:
    return {i: Link(n, (fail or {}).get(i, "")) for i, n in enumerate(nodes, start=1)}


def exact_total(nodes: Sequence[Node], members: Sequence[int]) -> np.ndarray:
    return sum((nodes[i - 1].values for i in members), np.zeros(CELLS, dtype=np.int64))


# ---------------------------------------------------------------- honest runs


def test_the_sum_is_exact_and_each_node_is_charged_once(nodes: list[Node]) -> None:
    result = run_session(session(nodes), links(nodes))
    assert result.survivors == (1, 2, 3, 4, 5, 6) and not result.dropped
    (count,) = result.components
    assert np.array_equal(count.values, exact_total(nodes, result.survivors))
    assert count.variance == pytest.approx(6 * 2.5**2 / GAMMA**2)
    assert [n.calls for n in nodes] == [1] * 6


@pytest.mark.parametrize(
    "fail",
    [
        {2: "masked-input"},  # shared keys, then dropped: its pairwise masks are removed
        {2: "share-keys"},  # dropped before sharing: nobody masked against it
        {3: "advertise", 5: "masked-input"},
        {1: "unmask", 6: "consistency"},  # dropped after sending input: still summed
    ],
)
def test_up_to_n_minus_threshold_members_may_drop_out(
    nodes: list[Node], fail: dict[int, str]
) -> None:
    result = run_session(session(nodes), links(nodes, fail))
    summed = [
        i for i in range(1, 7) if fail.get(i) not in ("advertise", "share-keys", "masked-input")
    ]
    assert list(result.survivors) == summed
    assert np.array_equal(result.components[0].values, exact_total(nodes, summed))
    assert set(result.dropped) == set(fail)
    for i, node in enumerate(nodes, start=1):
        sent_input = fail.get(i) not in ("advertise", "share-keys", "masked-input")
        assert node.calls == int(sent_input)


def test_a_session_that_loses_too_many_aborts_and_its_charges_stand(nodes: list[Node]) -> None:
    fail = {1: "unmask", 2: "unmask", 3: "consistency"}
    with pytest.raises(SessionAbortedError, match="stopped at unmask") as caught:
        run_session(session(nodes), links(nodes, fail))
    assert caught.value.charged == (1, 2, 3, 4, 5, 6)
    assert "are charged" in caught.value.message
    assert [n.calls for n in nodes] == [1] * 6
    with pytest.raises(SessionAbortedError, match="No member was charged"):
        run_session(session(nodes), links(nodes, {1: "advertise", 2: "advertise", 3: "advertise"}))


def test_a_node_restarted_mid_session_answers_every_round_as_before(nodes: list[Node]) -> None:
    params = session(nodes)
    ls = links(nodes)
    adverts = [ls[i].advertise(params) for i in ls]
    sealed = {i: ls[i].share_keys(params, adverts) for i in ls}
    inbox = {i: [s for out in sealed.values() for s in out if s.recipient == i] for i in ls}
    first = ls[3].masked_input(params, inbox[3])
    peers = {n.node_id: n.key.public_text for n in nodes}
    nodes[2].open(peers)  # node 3 restarts from its session file
    assert ls[3].advertise(params) == adverts[2]
    assert ls[3].share_keys(params, adverts) == sealed[3]
    assert ls[3].masked_input(params, inbox[3]) == first  # byte-identical, not re-noised
    assert nodes[2].calls == 1


# ---------------------------------------------------------------- a coordinator that cheats


def rounds_to_input(nodes: list[Node], params: SessionParameters) -> dict[int, Link]:
    ls = links(nodes)
    adverts = [ls[i].advertise(params) for i in ls]
    sealed = {i: ls[i].share_keys(params, adverts) for i in ls}
    for i in ls:
        ls[i].masked_input(params, [s for out in sealed.values() for s in out if s.recipient == i])
    return ls


def test_two_survivor_lists_cannot_both_be_signed_by_enough_nodes(nodes: list[Node]) -> None:
    params = session(nodes)  # N = 6, threshold 4, colluders 1: node 3 works with the coordinator
    ls = rounds_to_input(nodes, params)
    digest = params.digest()
    # Show nodes 1 and 2 that 6 dropped, and nodes 4-6 that 1 dropped; node 3 signs both.
    a, b = (1, 2, 3, 4, 5), (2, 3, 4, 5, 6)
    signed_a = {i: ls[i].consistency(params, a) for i in (1, 2)}
    signed_a[3] = nodes[2].key.sign(survivors_message(digest, a))
    signed_b = {i: ls[i].consistency(params, b) for i in (4, 5, 6)}
    signed_b[3] = nodes[2].key.sign(survivors_message(digest, b))
    # An honest node signs one list only, also after a restart.
    with pytest.raises(SecureAggregationError, match="second, different survivor list"):
        ls[2].consistency(params, b)
    nodes[1].open({n.node_id: n.key.public_text for n in nodes})
    with pytest.raises(SecureAggregationError, match="second, different survivor list"):
        ls[2].consistency(params, b)
    # List a has 3 signatures, fewer than 4: nobody reveals for it.
    for i in (1, 2):
        with pytest.raises(SecureAggregationError, match="valid survivor signatures"):
            ls[i].unmask(params, a, signed_a)
    # List b has 4 and its signers reveal for it, consistently.
    reveals = [ls[i].unmask(params, b, signed_b) for i in (4, 5, 6)]
    # What the coordinator and node 3 hold of each member's two secrets: node 3 holds one
    # share of each; the reveals add theirs. No member has both secrets rebuildable.
    for u in range(1, 7):
        self_mask = 1 + sum(u in r.self_mask_shares for r in reveals)
        mask_key = 1 + sum(u in r.mask_key_shares for r in reveals)
        assert not (self_mask >= params.threshold and mask_key >= params.threshold), u


def test_a_survivor_s_mask_key_share_is_never_revealed(nodes: list[Node]) -> None:
    params = session(nodes)
    ls = rounds_to_input(nodes, params)
    everyone = (1, 2, 3, 4, 5, 6)
    signatures = {i: ls[i].consistency(params, everyone) for i in ls}
    reveal = ls[1].unmask(params, everyone, signatures)
    assert set(reveal.self_mask_shares) == set(everyone) and not reveal.mask_key_shares
    # Claim now that 6 dropped, to get its mask-key share: refused, also after a restart.
    without_6 = (1, 2, 3, 4, 5)
    for restart in (False, True):
        if restart:
            nodes[1].open({n.node_id: n.key.public_text for n in nodes})
        with pytest.raises(SecureAggregationError, match="not the survivor list this node signed"):
            ls[2].unmask(params, without_6, {i: signatures[i] for i in without_6})
    assert ls[2].unmask(params, everyone, signatures).mask_key_shares == {}


def test_keys_from_another_session_or_substituted_keys_are_refused(nodes: list[Node]) -> None:
    old, new = session(nodes), session(nodes)
    ls = links(nodes)
    old_adverts = [ls[i].advertise(old) for i in ls]
    new_adverts = [ls[i].advertise(new) for i in ls]
    replayed = [*new_adverts[:1], *old_adverts[1:]]
    with pytest.raises(SecureAggregationError, match="not signed by its pinned ledger key"):
        ls[1].share_keys(new, replayed)
    stranger = KeyAdvert(2, bytes(range(32)), new_adverts[1].mask_key, new_adverts[1].signature)
    with pytest.raises(SecureAggregationError, match="not signed by its pinned ledger key"):
        ls[1].share_keys(new, [new_adverts[0], stranger, *new_adverts[2:]])
    with pytest.raises(SecureAggregationError, match="own keys"):
        ls[1].share_keys(new, new_adverts[1:])


def test_misdirected_or_altered_shares_are_refused(nodes: list[Node]) -> None:
    params = session(nodes)
    ls = links(nodes)
    adverts = [ls[i].advertise(params) for i in ls]
    sealed = {i: ls[i].share_keys(params, adverts) for i in ls}
    for_3 = [s for out in sealed.values() for s in out if s.recipient == 3]
    not_from_4 = [s for s in for_3 if s.sender != 4]
    with pytest.raises(SecureAggregationError, match="for another node"):
        ls[4].masked_input(params, not_from_4)
    with pytest.raises(SecureAggregationError, match=r"sharer list names members \[4\]"):
        ls[4].masked_input(params, for_3)  # a share from itself
    redirected = [dataclasses.replace(s, recipient=4) for s in not_from_4]
    with pytest.raises(SecureAggregationError, match="failed authentication"):
        ls[4].masked_input(params, redirected)
    flipped = [dataclasses.replace(for_3[0], sealed=for_3[0].sealed[:-1] + b"\x00"), *for_3[1:]]
    with pytest.raises(SecureAggregationError, match="failed authentication"):
        ls[3].masked_input(params, flipped)
    assert nodes[2].calls == 0 and nodes[3].calls == 0  # nothing charged for a refusal


def test_rosters_a_node_cannot_count_on_are_refused(nodes: list[Node], tmp_path: Path) -> None:
    ls = links(nodes)
    stranger = Member(6, "ngo-x", create_signing_key(tmp_path / "x.key").public_text)
    roster = [Member(i, n.node_id, n.key.public_text) for i, n in enumerate(nodes[:5], 1)]
    with pytest.raises(SecureAggregationError, match="not pinned: ngo-x"):
        ls[1].advertise(session(nodes, members=(*roster, stranger)))
    peers = {n.node_id: n.key.public_text for n in nodes}
    nodes[0].open(peers, min_cohort=7)
    with pytest.raises(SecureAggregationError, match="only with at least 7"):
        ls[1].advertise(session(nodes))
    nodes[0].open(peers, colluders=2)
    with pytest.raises(SecureAggregationError, match="assumes 1 colluders"):
        ls[1].advertise(session(nodes))
    with pytest.raises(SecureAggregationError, match="past its deadline"):
        ls[2].advertise(session(nodes, not_after=int(NOW) - 1))
    with pytest.raises(SecureAggregationError, match="more than 24 hours away"):
        ls[2].advertise(session(nodes, not_after=int(NOW) + 24 * 3600 + 1))
    ls[3].advertise(session(nodes, not_after=int(NOW) + 24 * 3600))  # the furthest accepted
    assert SessionStore(nodes[2].store_path).count() == 1
    assert SessionStore(nodes[1].store_path).count() == 0  # nothing kept of a refusal


def test_a_session_id_names_one_set_of_parameters(nodes: list[Node]) -> None:
    params = session(nodes)
    ls = links(nodes)
    ls[1].advertise(params)
    with pytest.raises(SecureAggregationError, match="differ from those this node joined"):
        ls[1].advertise(dataclasses.replace(params, query_id="q-other"))
    participant = nodes[0].participant
    assert participant is not None
    with pytest.raises(SecureAggregationError, match="another identity"):
        participant.advertise(params, "another-coordinator")


def test_a_session_past_its_deadline_is_refused_at_the_charge_and_charges_nothing(
    nodes: list[Node],
) -> None:
    params = session(nodes)
    ls = links(nodes)
    adverts = [ls[i].advertise(params) for i in ls]
    sealed = {i: ls[i].share_keys(params, adverts) for i in ls}
    nodes[0].open({n.node_id: n.key.public_text for n in nodes}, now=params.not_after + 1)
    with pytest.raises(SecureAggregationError, match="past its deadline"):
        ls[1].masked_input(params, [s for out in sealed.values() for s in out if s.recipient == 1])
    assert nodes[0].calls == 0


class CrashAfterCharge(Exception):
    """Stands for the process dying after the ledger committed, before the session file did."""


def test_a_crash_between_the_charge_and_the_session_file_fixes_the_sharers(
    nodes: list[Node],
) -> None:
    params = session(nodes)
    ls = links(nodes)
    adverts = [ls[i].advertise(params) for i in ls]
    sealed = {i: ls[i].share_keys(params, adverts) for i in ls}
    to_1 = [s for out in sealed.values() for s in out if s.recipient == 1]
    node = nodes[0]
    honest = node.contribute

    def charge_then_crash(*args: Any) -> Contribution:
        honest(*args)  # the ledger's charge is durable
        raise CrashAfterCharge

    node.contribute = charge_then_crash  # type: ignore[method-assign,assignment]
    node.open({n.node_id: n.key.public_text for n in nodes})
    with pytest.raises(CrashAfterCharge):
        ls[1].masked_input(params, to_1)
    node.contribute = honest  # type: ignore[method-assign]
    node.open({n.node_id: n.key.public_text for n in nodes})  # restarted, same file
    # Asked again with one sharer fewer, the node refuses: its peers are fixed.
    with pytest.raises(SecureAggregationError, match="different list of sharers"):
        ls[1].masked_input(params, to_1[:-1])
    assert node.calls == 1
    masked = ls[1].masked_input(params, to_1)  # the same sharers: answered
    assert masked.index == 1 and node.calls == 2  # (a real ledger replays the stored vector)
