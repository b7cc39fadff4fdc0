"""A node's input to a secure sum: plan, charge, noise share, then the masked rounds.

:class:`SecureSums` joins the transport-free protocol
(:class:`node.secure_sum.SecureSumParticipant`) to this node's policy,
records and ledger. The rules (pinned peers, least cohort, colluders) are
read from the policy in force at each round, so a reloaded policy applies to
the next round. The contribution to a masked input is made in the order the
node answers any query:

1. plan the query against schema and policy (kinds, columns, the per-query
   maximum), and the caller's grant;
2. judge the session's noise for this node's own sensitivity, per component
   (:func:`node.mechanisms.check_share`: σᵢ at least 2, τ negligible, and the
   honest sum's cost within this node's share of the requested cost);
3. the read-only ledger pre-check (budget, worst-case caps, query-id
   replay), before any record is touched;
4. exact aggregates, γ·x plus an OpenDP noise share per component;
5. one durable ledger transaction that charges the requested cost and the
   worst case, storing the noised vector; only then is it masked and sent.

Privacy unit: one client of this node with all their records, as for every
release here. The charge is exactly the requested ρ; the ledger records
beside it OpenDP's map of the honest shares' sum plus the τ term (the
aggregate guarantee) and the map of this node's share alone (the worst case).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from node import answering, engine
from node.config import CoordinatorGrant
from node.mechanisms import NoiseShare, check_share, release_share
from node.secure_sessions import SessionStore
from node.secure_sum import Contribution, SecureSumParticipant, SecureSumRules
from tiaki import receipts
from tiaki.budget import PrivacyDefinition
from tiaki.distributed_noise import NoiseShareError
from tiaki.errors import PolicyViolationError
from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.session import CellKey, ComponentShare, Reveal, SessionParameters
from tiaki.secure_records import SecureRevealRecord, SecureSessionRecord

if TYPE_CHECKING:
    from node.service import NodeService

# The noised vector as the ledger stores it (and commits to): int64, little-endian.
VECTOR_DTYPE = "<i8"


class SecureSums:
    """The secure-sum rounds of one node, over its service's policy, records and ledger.

    ``service``'s config may be swapped by a policy reload; it is read afresh
    at every round. The session file is opened at the first round asked, so a
    node whose policy never enables secure sums never creates it.
    """

    def __init__(self, service: NodeService, clock: Callable[[], float] = time.time) -> None:
        self._service = service
        self._clock = clock
        self._lock = threading.Lock()
        self._store: SessionStore | None = None

    def participant(self) -> SecureSumParticipant:
        """This node's side of the protocol under the policy in force now."""
        config = self._service.config
        rules = config.policy.secure_aggregation
        if rules is None:
            raise PolicyViolationError(
                "this node takes no part in secure sums: its policy has no secure_aggregation "
                "section (ask it per node instead)"
            )
        with self._lock:
            if self._store is None:
                self._store = SessionStore(config.paths.secure_sessions)
            store = self._store
        return SecureSumParticipant(
            config.node_id,
            self._service.signing_key,
            SecureSumRules(
                peers={p.node_id: p.signing_key for p in rules.peers},
                min_cohort=rules.min_cohort,
                colluders=rules.colluders,
            ),
            store,
            self.contribute,
            clock=self._clock,
        )

    def unmask(
        self,
        participant: SecureSumParticipant,
        params: SessionParameters,
        identity: str,
        survivors: Sequence[int],
        signatures: Mapping[int, str],
    ) -> Reveal:
        """The unmask round, then its record in the ledger's chain, before the reveal leaves.

        The session file has stored the reveal already (and refuses any
        other); the ``secure_reveal`` entry lets an auditor check across the
        members' ledgers that no member had both kinds of share revealed.
        """
        reveal = participant.unmask(params, identity, survivors, signatures)
        self._service.ledger.record_reveal(
            SecureRevealRecord(
                session_id=params.session_id.hex(),
                survivors=tuple(sorted(set(survivors))),
                self_mask_shares=tuple(sorted(reveal.self_mask_shares)),
                mask_key_shares=tuple(sorted(reveal.mask_key_shares)),
            )
        )
        return reveal

    def contribute(
        self, params: SessionParameters, identity: str, grant: CoordinatorGrant | None
    ) -> Contribution:
        """γ·x plus this node's noise shares, charged durably before it returns."""
        config = self._service.config  # one policy for the whole contribution
        policy = config.policy
        if policy.privacy_definition is not PrivacyDefinition.ZCDP:  # pragma: no cover
            raise PolicyViolationError("secure sums need a zCDP node")  # policy validation
        query = params.query
        plan = engine.plan(query, config.schema, policy)
        if grant is not None and grant.kinds is not None and query.kind not in grant.kinds:
            raise PolicyViolationError(
                f"{identity!r} may ask only {', '.join(k.value for k in grant.kinds)} queries here"
            )
        n = len(plan.components)
        if len(params.scale_factors) != n:
            raise SecureAggregationError(
                f"the session gives {len(params.scale_factors)} scale factors for a "
                f"{query.kind.value} query, which has {n} components"
            )
        budget_shares = answering.shares(query.cost.amount, n)
        try:
            noise = tuple(
                check_share(float(s.l2), budget, params.cohort, gamma, scale, plan.n_cells)
                for s, budget, gamma, scale in zip(
                    plan.sensitivities,
                    budget_shares,
                    params.scale_factors,
                    params.share_scales,
                    strict=True,
                )
            )
        except NoiseShareError as exc:
            raise SecureAggregationError(exc.message) from None
        aggregate = sum((s.aggregate for s in noise), Fraction(0))
        worst_case = sum((s.worst_case for s in noise), Fraction(0))
        cap = grant.budget_cap if grant is not None else None
        canonical = query.canonical()
        session_hex = params.session_id.hex()
        ledger = self._service.ledger
        stored = ledger.check_secure(
            identity, params.query_id, canonical, query.cost.amount, worst_case, session_hex, cap
        )
        if stored is None:
            dataset = self._service.datasets.current
            exact = engine.evaluate(plan, dataset, config.schema)
            vector = _noised(exact, noise)
            stored, _ = ledger.charge_secure(
                identity=identity,
                query_id=params.query_id,
                analyst=params.analyst,
                kind=query.kind.value,
                canonical_query=canonical,
                requested=query.cost.amount,
                charge=query.cost.amount,
                privacy_map=aggregate,
                worst_case=worst_case,
                session=SecureSessionRecord.of(params, noise),
                dataset_version=dataset.version,
                response=vector.astype(VECTOR_DTYPE).tobytes(),
                commitment_salt=receipts.new_salt(),
                identity_cap=cap,
            )
        # A replay (a crash after the charge, before the session file kept the
        # input) gets the stored vector: the same noise, nothing charged again.
        vector = np.frombuffer(stored.response, dtype=VECTOR_DTYPE).astype(np.int64)
        n_bins = len(plan.bin_labels)
        return Contribution(
            vector=vector,
            components=tuple(
                ComponentShare(name, plan.n_cells, share.share_scale)
                for name, share in zip(plan.components, noise, strict=True)
            ),
            cells=tuple(
                CellKey(plan.group_labels[i // n_bins], plan.bin_labels[i % n_bins])
                for i in range(plan.n_cells)
            ),
            aggregate=aggregate,
            worst_case=worst_case,
        )

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _noised(exact: tuple[engine.ExactAggregate, ...], noise: tuple[NoiseShare, ...]) -> np.ndarray:
    """Every component's γ·x plus its OpenDP share, concatenated in component order."""
    return np.concatenate(
        [release_share(agg.values, share) for agg, share in zip(exact, noise, strict=True)]
    )
