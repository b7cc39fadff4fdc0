"""The coordinator's side of a secure sum: relay five rounds, then remove the masks.

The coordinator proposes the session (:class:`~tiaki.secagg.session.SessionParameters`),
relays each round's messages between the nodes (it cannot read the sealed
ones, and everything a node signs covers the session digest), and at the
end rebuilds from the nodes' reveals what it needs to take the masks off the
sum of the survivors' inputs. It learns the sum, and nothing about any one
node's input beyond it.

Members drop out of a session by failing a round (unreachable, refusing, or
sending something that does not check). Up to N − threshold may drop; when
fewer than ``threshold`` remain at any round the session aborts with
:class:`SessionAbortedError`, naming each member's reason. Charges made by
nodes that sent their masked input stand either way: the analyst is told.

Each round is asked of every member at once (a thread per call, as the
per-node fan-out does); a round's deadline is the session's.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from tiaki.distributed_noise import sum_variance
from tiaki.errors import TiakiError
from tiaki.query import Query
from tiaki.secagg import keys, shamir
from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.masking import decode_vector, unmasked_sum
from tiaki.secagg.session import (
    SESSION_ID_BYTES,
    CellKey,
    ComponentShare,
    KeyAdvert,
    MaskedInput,
    Member,
    Reveal,
    SealedShares,
    SessionParameters,
    survivors_message,
)
from tiaki.signing import verify_signature

T = TypeVar("T")


class SessionLink(Protocol):
    """How the coordinator reaches one member for each round (a gRPC client, or in-process)."""

    def advertise(self, params: SessionParameters) -> KeyAdvert: ...

    def share_keys(
        self, params: SessionParameters, adverts: Sequence[KeyAdvert]
    ) -> Sequence[SealedShares]: ...

    def masked_input(
        self, params: SessionParameters, sealed: Sequence[SealedShares]
    ) -> MaskedInput: ...

    def consistency(self, params: SessionParameters, survivors: Sequence[int]) -> str: ...

    def unmask(
        self, params: SessionParameters, survivors: Sequence[int], signatures: Mapping[int, str]
    ) -> Reveal: ...


class SessionAbortedError(TiakiError):
    """Fewer than ``threshold`` members are left; nothing is released.

    ``dropped`` says why each member left; ``charged`` lists those that sent
    a masked input, whose charges stand.
    """

    def __init__(
        self,
        round_name: str,
        dropped: Mapping[int, str],
        charged: Sequence[int],
        errors: Mapping[int, TiakiError] | None = None,
    ):
        self.round_name = round_name
        self.dropped = dict(dropped)
        self.charged = tuple(charged)
        # The error each member's call ended with, where one did (the others
        # sent something that did not check).
        self.errors = dict(errors or {})
        reasons = "; ".join(f"member {i}: {why}" for i, why in sorted(self.dropped.items()))
        spent = (
            f" Members {', '.join(map(str, self.charged))} had sent their input and are charged."
            if self.charged
            else " No member was charged."
        )
        super().__init__(
            f"the secure sum stopped at {round_name}: too few members left ({reasons}).{spent}"
        )


@dataclass(frozen=True)
class SummedComponent:
    """One component of the decoded sum, in the query's integer units, and its noise."""

    name: str
    values: NDArray[np.float64]
    variance: float  # of each cell's noise, an upper bound (see tiaki.distributed_noise)


@dataclass(frozen=True)
class SecureSum:
    """What a secure sum releases: the total over the survivors, per component."""

    params: SessionParameters
    survivors: tuple[int, ...]
    charged: tuple[int, ...]  # members that sent a masked input (charged, whether summed or not)
    dropped: Mapping[int, str]
    components: tuple[SummedComponent, ...]
    cells: tuple[CellKey, ...]  # the public cell each entry of a component stands for
    # What each member that sent an input charged: (aggregate, worst case).
    charges: Mapping[int, tuple[Fraction, Fraction]]
    # The error each dropped member's call ended with, where one did.
    errors: Mapping[int, TiakiError] = field(default_factory=dict)


def new_session(
    query_id: str,
    query: Query,
    members: Sequence[Member],
    *,
    threshold: int,
    colluders: int,
    scale_factors: Sequence[int],
    share_scales: Sequence[float],
    not_after: int,
    analyst: str = "",
) -> SessionParameters:
    """Fresh public parameters: a random session id, nothing else drawn."""
    return SessionParameters(
        session_id=secrets.token_bytes(SESSION_ID_BYTES),
        query_id=query_id,
        query=query,
        members=tuple(members),
        threshold=threshold,
        colluders=colluders,
        scale_factors=tuple(scale_factors),
        share_scales=tuple(share_scales),
        not_after=not_after,
        analyst=analyst,
    )


class _Round:
    """One round asked of several members at once; who answered, and why the others did not."""

    def __init__(self, pool: ThreadPoolExecutor, dropped: dict[int, str]) -> None:
        self._pool = pool
        self.dropped = dropped
        self.errors: dict[int, TiakiError] = {}

    def ask(self, members: Sequence[int], call: Callable[[int], T]) -> dict[int, T]:
        futures = {i: self._pool.submit(call, i) for i in members}
        answered: dict[int, T] = {}
        for i, future in futures.items():
            try:
                answered[i] = future.result()
            except TiakiError as exc:
                self.dropped[i] = exc.message.splitlines()[0][:200]
                self.errors[i] = exc
        return answered


def run_session(
    params: SessionParameters,
    links: Mapping[int, SessionLink],
    pool: ThreadPoolExecutor | None = None,
) -> SecureSum:
    """Drive one session over ``links`` (by member index) and decode the sum."""
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=max(1, min(64, params.size)))
    try:
        return _run(params, links, _Round(pool, {}))
    finally:
        if own_pool:
            pool.shutdown(wait=True)


def _run(params: SessionParameters, links: Mapping[int, SessionLink], rnd: _Round) -> SecureSum:
    digest = params.digest()
    charged: list[int] = []

    def enough(alive: Sequence[int], round_name: str) -> None:
        if len(alive) < params.threshold:
            raise SessionAbortedError(round_name, rnd.dropped, charged, rnd.errors)

    # Round 0: keys. The coordinator checks the signatures too, so one bad advert
    # does not make every honest node refuse the next round.
    adverts = rnd.ask(sorted(links), lambda i: links[i].advertise(params))
    for i, advert in list(adverts.items()):
        member = params.members[i - 1]
        if advert.index != i or not verify_signature(
            member.signing_key, advert.message(digest), advert.signature
        ):
            rnd.dropped[i] = "its key advert is not signed by its ledger key"
            del adverts[i]
    enough(list(adverts), "advertise")
    listed = [adverts[i] for i in sorted(adverts)]

    # Round 1: sealed shares, relayed as they are.
    sealed_by = rnd.ask(sorted(adverts), lambda i: links[i].share_keys(params, listed))
    inbox: dict[int, list[SealedShares]] = {i: [] for i in sealed_by}
    for i, sealed in sealed_by.items():
        for s in sealed:
            if s.sender == i and s.recipient in inbox:
                inbox[s.recipient].append(s)
    enough(list(sealed_by), "share-keys")

    # Round 2: masked inputs. Each member gets the shares sent to it by members that shared.
    inputs = rnd.ask(sorted(sealed_by), lambda i: links[i].masked_input(params, inbox[i]))
    charged.extend(sorted(inputs))
    layout, cells = _common_layout(params, inputs, rnd.dropped)
    enough(list(inputs), "masked-input")
    survivors = tuple(sorted(i for i in inputs if i not in rnd.dropped))
    enough(survivors, "masked-input")

    # Round 3: every survivor signs the one survivor list.
    message = survivors_message(digest, survivors)
    signed = rnd.ask(survivors, lambda i: links[i].consistency(params, survivors))
    signatures = {
        i: s
        for i, s in signed.items()
        if verify_signature(params.members[i - 1].signing_key, message, s)
    }
    enough(list(signatures), "consistency")

    # Round 4: reveals, from any `threshold` of the signers.
    reveals = rnd.ask(sorted(signatures), lambda i: links[i].unmask(params, survivors, signatures))
    enough(list(reveals), "unmask")
    components = _decode(params, survivors, sealed_by, adverts, inputs, reveals, layout)
    return SecureSum(
        params=params,
        survivors=survivors,
        charged=tuple(charged),
        dropped=dict(rnd.dropped),
        errors=dict(rnd.errors),
        components=components,
        cells=cells,
        charges={i: (m.aggregate, m.worst_case) for i, m in inputs.items()},
    )


Layout = tuple[tuple[ComponentShare, ...], tuple[CellKey, ...]]


def _common_layout(
    params: SessionParameters, inputs: dict[int, MaskedInput], dropped: dict[int, str]
) -> Layout:
    """The components every input shares; an input laid out otherwise is left out of the sum.

    An input whose noise shares are not at the session's scales is left out too:
    every member's bound assumes equal shares.
    """
    layouts: dict[Layout, list[int]] = {}
    for i, masked in inputs.items():
        scales = tuple(c.share_scale for c in masked.components)
        if scales != params.share_scales:
            dropped[i] = "its noise shares are not at the session's scales"
            continue
        layouts.setdefault((masked.components, masked.cells), []).append(i)
    if not layouts:
        return (), ()
    common = max(layouts, key=lambda layout: len(layouts[layout]))
    for layout, members in layouts.items():
        if layout != common:
            for i in members:
                dropped[i] = "its masked input is laid out unlike the others'"
    return common


def _decode(
    params: SessionParameters,
    survivors: tuple[int, ...],
    sharers: Mapping[int, object],
    adverts: Mapping[int, KeyAdvert],
    inputs: Mapping[int, MaskedInput],
    reveals: Mapping[int, Reveal],
    layout: tuple[ComponentShare, ...],
) -> tuple[SummedComponent, ...]:
    length = sum(c.length for c in layout)
    t = params.threshold
    try:
        self_seeds = {
            u: shamir.reconstruct({r.index: r.self_mask_shares[u] for r in reveals.values()}, t)
            for u in survivors
        }
        dropped_keys = {
            v: keys.from_element(
                shamir.reconstruct({r.index: r.mask_key_shares[v] for r in reveals.values()}, t)
            )
            for v in sharers
            if v not in survivors
        }
    except KeyError as exc:  # a reveal without a share it had to carry
        raise SecureAggregationError(f"a reveal is missing the share for member {exc}") from None
    total = unmasked_sum(
        {u: decode_vector(inputs[u].vector, length) for u in survivors},
        self_seeds,
        dropped_keys,
        {u: adverts[u].mask_key for u in survivors},
        params.session_id,
        length,
    )
    out = []
    start = 0
    for component, gamma, scale in zip(
        layout, params.scale_factors, params.share_scales, strict=True
    ):
        part = total[start : start + component.length]
        start += component.length
        out.append(
            SummedComponent(
                component.name,
                part.astype(np.float64) / gamma,
                sum_variance([scale] * len(survivors), gamma),
            )
        )
    return tuple(out)
