"""One secure sum: its public parameters, and the messages of its rounds, as signed.

Bonawitz et al. 2017 (*Practical Secure Aggregation for Privacy-Preserving
Machine Learning*, CCS), the variant secure against an active server, with
every message relayed by the coordinator. The rounds:

0. *advertise*: each node checks the parameters and answers with two fresh
   X25519 public keys (one to seal its messages to peers, one to agree mask
   seeds), signed with its long-term ledger key;
1. *share keys*: given the signed adverts, each node Shamir-shares its mask
   key and a fresh self-mask seed among the advertised members, and seals
   each peer's two shares to that peer;
2. *masked input*: given the sealed shares addressed to it, each node
   charges its ledger, draws its noise share and sends its masked vector;
3. *consistency*: given the survivors (who sent a masked input), each node
   signs that list;
4. *unmask*: given at least ``threshold`` survivors' signatures on the same
   list, each node reveals, for every survivor, its share of the self-mask
   seed and, for every member that dropped after sharing, its share of the
   mask key; never both kinds for one member.

Everything a node signs covers :meth:`SessionParameters.digest`, so nothing
signed in one session counts in another, and the coordinator cannot show two
nodes two different sessions under one id.

Why ``2·threshold > N + colluders``: the coordinator could try to tell two
halves of the survivors different survivor lists, to collect self-mask shares
for a node from one half and its mask-key shares from the other. Round 4 needs
``threshold`` signatures on one list; honest nodes sign one list only and
colluders sign anything, so two lists need 2·threshold − colluders honest
signers, more than the N − colluders there are. This is Bonawitz et al.'s
consistency argument for the active model (their §4 and the security analysis
for active adversaries, which assumes the server may corrupt clients and
requires a public-key infrastructure for the signatures, here the pinned
ledger keys); the inequality is our statement of it for ``colluders`` of N.
``threshold > colluders`` follows from it, so the colluders alone never hold
enough shares of any secret.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

from tiaki.distributed_noise import (
    MIN_SHARE_SCALE,
    Cohort,
    NoiseShareError,
    check_scale_factor,
)
from tiaki.query import Query
from tiaki.secagg.errors import SecureAggregationError

SESSION_ID_BYTES = 16
LABEL = b"tiaki/secagg/v1"
# The sealed plaintext of round 1: sender, recipient, then the two shares.
_SHARES_PLAINTEXT_BYTES = 4 + 4 + 32 + 32
MAX_MEMBERS = 1000


@dataclass(frozen=True)
class Member:
    """One node of a session: its Shamir index and the ledger key peers pinned for it."""

    index: int
    node_id: str
    signing_key: str  # "ed25519:<base64>", the node's ledger signing key


@dataclass(frozen=True)
class SessionParameters:
    """Everything public about one secure sum, as the coordinator proposes it.

    ``threshold`` masked inputs are needed for a release, so up to
    N − threshold nodes may drop out. ``colluders`` is how many members the
    session assumes may work with the coordinator; a node takes part only if
    that is at least what its own policy assumes. ``scale_factors`` has one γ
    per component of the query (a mean has two), and ``share_scales`` the one
    scale σᵢ (in scaled units) every member's noise share of that component
    has, so that each node's KLS21 bound is for h equal shares; each node
    checks that it is enough for its own sensitivity. ``not_after`` is the last
    second (Unix time) at which a node will act on the session.
    """

    session_id: bytes
    query_id: str
    query: Query
    members: tuple[Member, ...]
    threshold: int
    colluders: int
    scale_factors: tuple[int, ...]
    share_scales: tuple[float, ...]
    not_after: int
    analyst: str = ""  # the person asking, as the coordinator claims; recorded, never trusted

    def __post_init__(self) -> None:
        if len(self.session_id) != SESSION_ID_BYTES:
            raise SecureAggregationError(f"a session id is {SESSION_ID_BYTES} bytes")
        n = len(self.members)
        if not 2 <= n <= MAX_MEMBERS:
            raise SecureAggregationError(f"a session has 2 to {MAX_MEMBERS} members, not {n}")
        if [m.index for m in self.members] != list(range(1, n + 1)):
            raise SecureAggregationError("members must be listed with indices 1, 2, ..., N")
        for what, values in (
            ("node id", [m.node_id for m in self.members]),
            ("signing key", [m.signing_key for m in self.members]),
        ):
            if len(set(values)) != n:
                raise SecureAggregationError(f"two members of the session share a {what}")
        if not 1 <= self.threshold <= n:
            raise SecureAggregationError(f"the threshold must be from 1 to {n}")
        if self.colluders < 0 or 2 * self.threshold <= n + self.colluders:
            raise SecureAggregationError(
                f"a threshold of {self.threshold} of {n} does not stop a coordinator working "
                f"with {self.colluders} members from showing two survivor lists: it must be "
                f"more than (N + colluders)/2 = {(n + self.colluders) / 2:g}"
            )
        if not self.scale_factors:
            raise SecureAggregationError("a session needs a scale factor per component")
        if len(self.share_scales) != len(self.scale_factors):
            raise SecureAggregationError("a session needs a share scale per component")
        if not all(math.isfinite(s) and s >= MIN_SHARE_SCALE for s in self.share_scales):
            raise SecureAggregationError(
                f"every share scale must be at least {MIN_SHARE_SCALE:g}, or the sum of the "
                "shares is not Gaussian"
            )
        try:
            for gamma in self.scale_factors:
                check_scale_factor(gamma)
            self.cohort  # noqa: B018 - validates that some honest node's noise is in the sum
        except NoiseShareError as exc:  # one error type for a session that cannot be kept
            raise SecureAggregationError(exc.message) from None

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def cohort(self) -> Cohort:
        return Cohort(self.size, self.size - self.threshold, self.colluders)

    def member(self, node_id: str) -> Member:
        for m in self.members:
            if m.node_id == node_id:
                return m
        raise SecureAggregationError(f"{node_id!r} is not a member of this session")

    def canonical(self) -> str:
        doc = {
            "session_id": self.session_id.hex(),
            "query_id": self.query_id,
            "query": self.query.canonical(),
            "members": [[m.index, m.node_id, m.signing_key] for m in self.members],
            "threshold": self.threshold,
            "colluders": self.colluders,
            "scale_factors": list(self.scale_factors),
            "share_scales": [s.hex() for s in self.share_scales],  # exact, unlike repr
            "not_after": self.not_after,
            "analyst": self.analyst,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def digest(self) -> bytes:
        """SHA-256 of the canonical parameters: what every signature in the session covers."""
        return hashlib.sha256(LABEL + b"/session/" + self.canonical().encode()).digest()

    def roster_hash(self) -> str:
        """SHA-256 of the members alone, hex: what the ledgers record to compare rosters."""
        text = json.dumps([[m.index, m.node_id, m.signing_key] for m in self.members])
        return hashlib.sha256(text.encode()).hexdigest()


def _framed(*fields: bytes) -> bytes:
    """Length-prefixed fields, so no two different messages encode alike."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


@dataclass(frozen=True)
class KeyAdvert:
    """Round 0's answer: a member's two session public keys, signed with its ledger key."""

    index: int
    encryption_key: bytes  # X25519, to seal round 1's shares to this member
    mask_key: bytes  # X25519, to agree pairwise mask seeds with this member
    signature: str

    def message(self, digest: bytes) -> bytes:
        return advert_message(digest, self.index, self.encryption_key, self.mask_key)


def advert_message(digest: bytes, index: int, encryption_key: bytes, mask_key: bytes) -> bytes:
    return _framed(
        LABEL + b"/advertise", digest, index.to_bytes(4, "big"), encryption_key, mask_key
    )


@dataclass(frozen=True)
class SealedShares:
    """Round 1: one member's two shares for another, sealed to the recipient."""

    sender: int
    recipient: int
    sealed: bytes


def shares_plaintext(
    sender: int, recipient: int, mask_key_share: int, self_mask_share: int
) -> bytes:
    return (
        sender.to_bytes(4, "big")
        + recipient.to_bytes(4, "big")
        + mask_key_share.to_bytes(32, "big")
        + self_mask_share.to_bytes(32, "big")
    )


def read_shares_plaintext(plaintext: bytes) -> tuple[int, int, int, int]:
    """(sender, recipient, mask-key share, self-mask share) from round 1's plaintext."""
    if len(plaintext) != _SHARES_PLAINTEXT_BYTES:
        raise SecureAggregationError("a sealed share message has the wrong length")
    return (
        int.from_bytes(plaintext[0:4], "big"),
        int.from_bytes(plaintext[4:8], "big"),
        int.from_bytes(plaintext[8:40], "big"),
        int.from_bytes(plaintext[40:72], "big"),
    )


@dataclass(frozen=True)
class ComponentShare:
    """One component of a masked input: its length in the vector and its noise share's scale."""

    name: str
    length: int
    share_scale: float


@dataclass(frozen=True)
class CellKey:
    """One public cell of the answer: its group-by categories and histogram bin."""

    group: tuple[str, ...]
    bin: str = ""


@dataclass(frozen=True)
class MaskedInput:
    """Round 2's answer: a member's masked vector (uint64, little-endian) and its layout.

    ``cells`` are the public cells each component's entries stand for, in
    order; ``aggregate`` and ``worst_case`` what the member charged (exact,
    in its definition's units), for the analyst to see.
    """

    index: int
    vector: bytes
    components: tuple[ComponentShare, ...]
    cells: tuple[CellKey, ...] = ()
    aggregate: Fraction = Fraction(0)
    worst_case: Fraction = Fraction(0)

    @property
    def length(self) -> int:
        return sum(c.length for c in self.components)


def survivors_message(digest: bytes, survivors: Sequence[int]) -> bytes:
    """What round 3 signs: the session and the sorted list of members whose input arrived."""
    ordered = sorted(survivors)
    return _framed(LABEL + b"/consistency", digest, b"".join(i.to_bytes(4, "big") for i in ordered))


@dataclass(frozen=True)
class Reveal:
    """Round 4's answer: this member's shares, by the member each belongs to.

    ``self_mask_shares`` are for survivors (their self-masks are removed from
    the sum); ``mask_key_shares`` for members that shared keys but sent no
    masked input (their pairwise masks are removed). No member is in both.
    """

    index: int
    self_mask_shares: Mapping[int, int]
    mask_key_shares: Mapping[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "self_mask_shares", MappingProxyType(dict(self.self_mask_shares)))
        object.__setattr__(self, "mask_key_shares", MappingProxyType(dict(self.mask_key_shares)))
        both = set(self.self_mask_shares) & set(self.mask_key_shares)
        if both:
            raise SecureAggregationError(
                f"a reveal holds both kinds of share for members {sorted(both)}"
            )


def check_subset(
    inner: Iterable[int], outer: Iterable[int], what: str, least: int
) -> tuple[int, ...]:
    """``inner`` sorted, if it is a subset of ``outer`` with at least ``least`` members."""
    given = list(inner)
    ordered = tuple(sorted(set(given)))
    if len(ordered) != len(given):
        raise SecureAggregationError(f"the {what} list names a member twice")
    extra = set(ordered) - set(outer)
    if extra:
        raise SecureAggregationError(f"the {what} list names members {sorted(extra)} it cannot")
    if len(ordered) < least:
        raise SecureAggregationError(
            f"only {len(ordered)} {what}; the session needs at least {least}"
        )
    return ordered
