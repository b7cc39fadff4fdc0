"""A node's part in a secure sum: five rounds, each checked, stored, then answered.

The protocol is Bonawitz et al. 2017 in its variant against an active
coordinator (:mod:`tiaki.secagg.session` states the rounds and why the
threshold must exceed (N + colluders)/2). This module is the node's side of
it, without transport: the service calls one method per round with what the
coordinator relayed, and gets what to send back.

What the node refuses, whatever the coordinator says:

- a session past its deadline, or whose parameters differ from the ones the
  node first saw under that session id (a replay or a second version);
- a roster with any member whose ledger key this NGO did not pin, or fewer
  members than its policy's ``min_cohort``, or that assumes fewer colluders
  than its policy does;
- adverts that are not signed by the pinned keys, that repeat a key, or that
  change its own; shares that fail authentication or are addressed to
  another node;
- a survivor list other than the one it signed, or one signed by fewer than
  ``threshold`` survivors; and any round asked again with different inputs.

Each answer is stored (:mod:`node.secure_sessions`) before it is returned, so
a retry gets the same bytes and a restart changes nothing. The masked input
is computed by ``contribute``, which charges the ledger durably before it
returns the noised vector; nothing is refunded if the session later aborts
(a colluding coordinator could fake an abort after unmasking).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from node.config import CoordinatorGrant
from node.secure_sessions import SessionState, SessionStore
from tiaki.secagg import keys, shamir
from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.masking import (
    SEAL_PURPOSE,
    SHARES_ROUND,
    encode_vector,
    mask_vector,
)
from tiaki.secagg.session import (
    CellKey,
    ComponentShare,
    KeyAdvert,
    MaskedInput,
    Reveal,
    SealedShares,
    SessionParameters,
    advert_message,
    check_subset,
    read_shares_plaintext,
    shares_plaintext,
    survivors_message,
)
from tiaki.signing import SigningKey, verify_signature

# The furthest deadline a node accepts for a session, from when it is first asked.
MAX_SESSION_SECONDS = 24 * 3600


@dataclass(frozen=True)
class SecureSumRules:
    """What this NGO's policy says about secure sums: whom it counts, and how many."""

    peers: Mapping[str, str]  # node id -> the ledger signing key this NGO pinned for it
    min_cohort: int
    colluders: int


@dataclass(frozen=True)
class Contribution:
    """γ·x plus this node's noise share, per component, concatenated; charged already.

    ``cells`` name the public cells of each component's entries; ``aggregate``
    and ``worst_case`` are what the ledger charged for it.
    """

    vector: NDArray[np.int64]
    components: tuple[ComponentShare, ...]
    cells: tuple[CellKey, ...] = ()
    aggregate: Fraction = Fraction(0)
    worst_case: Fraction = Fraction(0)


# (session, the caller's identity, its grant in the policy) -> the charged contribution
Contribute = Callable[[SessionParameters, str, CoordinatorGrant | None], Contribution]


class SecureSumParticipant:
    """One node's side of every secure sum it is asked to join."""

    def __init__(
        self,
        node_id: str,
        signing_key: SigningKey,
        rules: SecureSumRules,
        store: SessionStore,
        contribute: Contribute,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.signing_key = signing_key
        self.rules = rules
        self.store = store
        self._contribute = contribute
        self._clock = clock

    # ------------------------------------------------------------ checks

    def _check_session(self, params: SessionParameters) -> int:
        """This node's index, if it will act on ``params`` at all now."""
        now = self._clock()
        if now > params.not_after:
            raise SecureAggregationError(
                f"session {params.session_id.hex()} is past its deadline; nothing was done"
            )
        if params.not_after > now + MAX_SESSION_SECONDS:
            # A session's secrets wait on disk until its reveal; one that never
            # ends would keep them, and its rounds askable, for ever.
            raise SecureAggregationError(
                f"the session's deadline is more than {MAX_SESSION_SECONDS // 3600} hours away; "
                "this node takes part only in sessions that end sooner"
            )
        me = params.member(self.node_id)
        if me.signing_key != self.signing_key.public_text:
            raise SecureAggregationError(
                "the session lists this node with a signing key that is not its own"
            )
        unpinned = [
            m.node_id
            for m in params.members
            if m.node_id != self.node_id and self.rules.peers.get(m.node_id) != m.signing_key
        ]
        if unpinned:
            raise SecureAggregationError(
                f"the session includes members this NGO has not pinned: {', '.join(unpinned[:5])}"
                " (policy.secure_aggregation.peers lists the nodes it counts, with their keys)"
            )
        if params.size < self.rules.min_cohort:
            raise SecureAggregationError(
                f"the session has {params.size} members; this NGO takes part only with at "
                f"least {self.rules.min_cohort}"
            )
        if params.colluders < self.rules.colluders:
            raise SecureAggregationError(
                f"the session assumes {params.colluders} colluders; this NGO's policy assumes "
                f"{self.rules.colluders}"
            )
        return me.index

    @staticmethod
    def _state(
        state: SessionState | None, params: SessionParameters, identity: str
    ) -> SessionState:
        if state is None:
            raise SecureAggregationError("this node has no such session; start with advertise")
        if state.digest != params.digest():
            raise SecureAggregationError(
                "the session's parameters differ from those this node joined under its id"
            )
        if state.identity != identity:
            raise SecureAggregationError("another identity started this session")
        return state

    # ------------------------------------------------------------ round 0

    def advertise(self, params: SessionParameters, identity: str) -> KeyAdvert:
        """Two fresh public keys for this session, signed; the same ones if asked again."""
        me = self._check_session(params)
        with self.store.session(params.session_id) as rnd:
            state = rnd.state
            if state is None:
                encryption = keys.generate()
                mask = keys.generate()
                enc_pub, mask_pub = keys.public_bytes(encryption), keys.public_bytes(mask)
                signature = self.signing_key.sign(
                    advert_message(params.digest(), me, enc_pub, mask_pub)
                )
                state = SessionState(
                    digest=params.digest(),
                    identity=identity,
                    encryption_element=keys.private_element(encryption),
                    mask_element=keys.private_element(mask),
                    advert_signature=signature,
                )
                rnd.save(state)
            state = self._state(state, params, identity)
            return self._own_advert(state, me)

    @staticmethod
    def _own_advert(state: SessionState, me: int) -> KeyAdvert:
        if state.encryption_element is None or state.mask_element is None:
            raise SecureAggregationError("this session's keys are erased: it has ended here")
        return KeyAdvert(
            me,
            keys.public_bytes(keys.from_element(state.encryption_element)),
            keys.public_bytes(keys.from_element(state.mask_element)),
            state.advert_signature,
        )

    # ------------------------------------------------------------ round 1

    def share_keys(
        self, params: SessionParameters, identity: str, adverts: Sequence[KeyAdvert]
    ) -> tuple[SealedShares, ...]:
        """Shares of this node's mask key and a fresh self-mask seed, one sealed pair per peer."""
        me = self._check_session(params)
        digest = params.digest()
        with self.store.session(params.session_id) as rnd:
            state = self._state(rnd.state, params, identity)
            holders = check_subset(
                [a.index for a in adverts], range(1, params.size + 1), "advert", params.threshold
            )
            if state.holders:
                if holders != state.holders:
                    raise SecureAggregationError(
                        "asked to share keys again with a different list of members"
                    )
                return tuple(SealedShares(me, v, state.sent_shares[v]) for v in holders if v != me)
            own = self._own_advert(state, me)
            by_index = {a.index: a for a in adverts}
            if me not in by_index or by_index[me] != own:
                raise SecureAggregationError("the adverts do not carry this node's own keys")
            seen: set[bytes] = set()
            for a in adverts:
                member = params.members[a.index - 1]
                if not verify_signature(member.signing_key, a.message(digest), a.signature):
                    raise SecureAggregationError(
                        f"member {a.index}'s keys are not signed by its pinned ledger key"
                    )
                for raw in (a.encryption_key, a.mask_key):
                    if raw in seen:
                        raise SecureAggregationError("two adverts carry the same public key")
                    seen.add(raw)
            assert state.encryption_element is not None and state.mask_element is not None
            encryption = keys.from_element(state.encryption_element)
            self_seed = shamir.random_element()
            mask_shares = shamir.split(state.mask_element, params.threshold, holders)
            seed_shares = shamir.split(self_seed, params.threshold, holders)
            sent: dict[int, bytes] = {}
            for v in holders:
                if v == me:
                    continue
                key = keys.agreed_key(
                    encryption, by_index[v].encryption_key, params.session_id, SEAL_PURPOSE, me, v
                )
                sent[v] = keys.seal(
                    key,
                    shares_plaintext(me, v, mask_shares[v], seed_shares[v]),
                    keys.message_aad(params.session_id, me, v, SHARES_ROUND),
                )
            rnd.save(
                replace(
                    state,
                    holders=holders,
                    encryption_keys={a.index: a.encryption_key for a in adverts},
                    mask_keys={a.index: a.mask_key for a in adverts},
                    self_seed=self_seed,
                    own_mask_key_share=mask_shares[me],
                    own_self_mask_share=seed_shares[me],
                    sent_shares=sent,
                )
            )
            return tuple(SealedShares(me, v, sent[v]) for v in holders if v != me)

    # ------------------------------------------------------------ round 2

    def masked_input(
        self,
        params: SessionParameters,
        identity: str,
        sealed: Sequence[SealedShares],
        grant: CoordinatorGrant | None = None,
    ) -> MaskedInput:
        """This node's masked vector: charged, noised, masked, stored, then returned.

        ``grant`` is the caller's entry in the policy, in force for the charge.
        """
        me = self._check_session(params)
        with self.store.session(params.session_id) as rnd:
            state = self._state(rnd.state, params, identity)
            if not state.holders:
                raise SecureAggregationError("keys were not shared yet in this session")
            senders = check_subset(
                [s.sender for s in sealed], [h for h in state.holders if h != me], "sharer", 0
            )
            survivors_so_far = tuple(sorted((*senders, me)))
            if len(survivors_so_far) < params.threshold:
                raise SecureAggregationError(
                    f"only {len(survivors_so_far)} members shared keys; the session needs "
                    f"{params.threshold}"
                )
            # The sharers are fixed once, before the charge: after a crash between
            # the ledger's commit and this file's, the retry masks the same
            # noised vector with the same peers, or is refused.
            if state.senders and survivors_so_far != state.senders:
                raise SecureAggregationError(
                    "asked for the masked input again with a different list of sharers"
                )
            if state.masked_vector:
                return self._stored_input(state, me)
            received = self._open_shares(params, state, me, sealed)
            self_seed, mask_element = state.self_seed, state.mask_element
            assert self_seed is not None and mask_element is not None
            if not state.senders:
                state = replace(state, senders=survivors_so_far)
                rnd.save(state)
                rnd.commit()
            contribution = self._contribute(params, identity, grant)  # charges the ledger first
            vector = mask_vector(
                contribution.vector,
                self_seed,
                keys.from_element(mask_element),
                {v: state.mask_keys[v] for v in survivors_so_far},
                params.session_id,
                me,
            )
            state = replace(
                state,
                senders=survivors_so_far,
                received_mask_key_shares={v: m for v, (m, _) in received.items()},
                received_self_mask_shares={v: b for v, (_, b) in received.items()},
                masked_vector=encode_vector(vector),
                components=tuple(
                    (c.name, c.length, c.share_scale) for c in contribution.components
                ),
                cells=tuple((c.group, c.bin) for c in contribution.cells),
                aggregate=contribution.aggregate,
                worst_case=contribution.worst_case,
            )
            rnd.save(state)
            return self._stored_input(state, me)

    def _open_shares(
        self,
        params: SessionParameters,
        state: SessionState,
        me: int,
        sealed: Sequence[SealedShares],
    ) -> dict[int, tuple[int, int]]:
        assert state.encryption_element is not None
        encryption = keys.from_element(state.encryption_element)
        received = {}
        for s in sealed:
            if s.recipient != me:
                raise SecureAggregationError(f"a share from member {s.sender} is for another node")
            key = keys.agreed_key(
                encryption,
                state.encryption_keys[s.sender],
                params.session_id,
                SEAL_PURPOSE,
                me,
                s.sender,
            )
            plain = keys.open_sealed(
                key, s.sealed, keys.message_aad(params.session_id, s.sender, me, SHARES_ROUND)
            )
            sender, recipient, mask_share, seed_share = read_shares_plaintext(plain)
            if (sender, recipient) != (s.sender, me):
                raise SecureAggregationError(f"member {s.sender}'s sealed shares name another pair")
            received[s.sender] = (mask_share, seed_share)
        return received

    @staticmethod
    def _stored_input(state: SessionState, me: int) -> MaskedInput:
        return MaskedInput(
            me,
            state.masked_vector,
            tuple(ComponentShare(n, length, s) for n, length, s in state.components),
            tuple(CellKey(group, bin_) for group, bin_ in state.cells),
            state.aggregate,
            state.worst_case,
        )

    # ------------------------------------------------------------ round 3

    def consistency(
        self, params: SessionParameters, identity: str, survivors: Sequence[int]
    ) -> str:
        """This node's signature on the survivor list; only ever on one list per session."""
        me = self._check_session(params)
        with self.store.session(params.session_id) as rnd:
            state = self._state(rnd.state, params, identity)
            if not state.masked_vector:
                raise SecureAggregationError("this node has sent no masked input in this session")
            listed = check_subset(survivors, state.senders, "survivor", params.threshold)
            if me not in listed:
                raise SecureAggregationError("the survivor list leaves out this node")
            if state.survivors:
                if listed != state.survivors:
                    raise SecureAggregationError(
                        "shown a second, different survivor list; this node signs only one"
                    )
                return state.survivors_signature
            signature = self.signing_key.sign(survivors_message(params.digest(), listed))
            rnd.save(replace(state, survivors=listed, survivors_signature=signature))
            return signature

    # ------------------------------------------------------------ round 4

    def unmask(
        self,
        params: SessionParameters,
        identity: str,
        survivors: Sequence[int],
        signatures: Mapping[int, str],
    ) -> Reveal:
        """Self-mask shares of survivors, mask-key shares of the dropped; never both for one."""
        me = self._check_session(params)
        with self.store.session(params.session_id) as rnd:
            state = self._state(rnd.state, params, identity)
            if not state.survivors:
                raise SecureAggregationError("this node has signed no survivor list yet")
            if tuple(sorted(set(survivors))) != state.survivors or len(survivors) != len(
                state.survivors
            ):
                raise SecureAggregationError("this is not the survivor list this node signed")
            if state.revealed:
                return self._stored_reveal(state, me)
            message = survivors_message(params.digest(), state.survivors)
            valid = [
                i
                for i, signature in signatures.items()
                if i in state.survivors
                and verify_signature(params.members[i - 1].signing_key, message, signature)
            ]
            if len(valid) != len(signatures) or len(valid) < params.threshold:
                raise SecureAggregationError(
                    f"{len(valid)} valid survivor signatures of {len(signatures)}; the session "
                    f"needs {params.threshold}, all valid"
                )
            own_share = state.own_self_mask_share
            assert own_share is not None  # stored with the holders, erased only after a reveal
            self_mask_shares = {
                v: own_share if v == me else state.received_self_mask_shares[v]
                for v in state.survivors
            }
            dropped = [v for v in state.senders if v not in state.survivors]
            mask_key_shares = {v: state.received_mask_key_shares[v] for v in dropped}
            done = replace(
                state,
                revealed_self_mask_shares=self_mask_shares,
                revealed_mask_key_shares=mask_key_shares,
            ).forget_secrets()
            rnd.save(done)
            return self._stored_reveal(done, me)

    @staticmethod
    def _stored_reveal(state: SessionState, me: int) -> Reveal:
        assert state.revealed_self_mask_shares is not None
        assert state.revealed_mask_key_shares is not None
        return Reveal(me, state.revealed_self_mask_shares, state.revealed_mask_key_shares)
