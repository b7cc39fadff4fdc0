"""What a node's chain records about secure sums: its rules for them, and each one it paid for.

- :class:`SecureAggregationRecord` is the ``secure_aggregation`` object of a
  ``policy`` entry (absent when the node takes no part in secure sums): the
  peers it pins by ledger key, the least cohort, the colluders it assumes and
  its two worst-case caps, per session and over the ledger's life.
- :class:`SecureSessionRecord` is the ``secure_session`` object of a
  ``charge`` entry for a node's masked input, beside that entry's
  ``worst_case`` amount: which session (its id and the hash of its roster),
  its parameters and the noise share this node added.

Amounts are exact decimal text; a share scale σᵢ, a float the node drew its
noise at, is written as its shortest ``repr`` text, which reads back to the
same float, so every body stays free of JSON numbers that are not integers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

from tiaki import body_fields as f
from tiaki.budget import format_amount
from tiaki.chain import ChainFormatError

if TYPE_CHECKING:
    from tiaki.secagg.session import SessionParameters

SESSION_ID_HEX = 32  # 16 bytes
ROSTER_HASH_HEX = 64  # SHA-256


@dataclass(frozen=True)
class SecurePeerRecord:
    """One node the policy counts as a participant, by the ledger key it pinned."""

    node_id: str
    signing_key: str

    def body(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "signing_key": self.signing_key}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SecurePeerRecord:
        return cls(f.text(body, "node_id"), f.text(body, "signing_key"))


@dataclass(frozen=True)
class SecureAggregationRecord:
    """The policy's rules for secure sums: pins, least cohort, colluders, worst-case caps."""

    peers: tuple[SecurePeerRecord, ...]
    min_cohort: int
    colluders: int
    worst_case_per_query: Fraction
    worst_case_lifetime: Fraction

    def body(self) -> dict[str, Any]:
        return {
            "peers": [p.body() for p in self.peers],
            "min_cohort": self.min_cohort,
            "colluders": self.colluders,
            "worst_case_per_query": format_amount(self.worst_case_per_query),
            "worst_case_lifetime": format_amount(self.worst_case_lifetime),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SecureAggregationRecord:
        return cls(
            tuple(SecurePeerRecord.from_body(p) for p in f.objects(body, "peers")),
            f.count(body, "min_cohort"),
            f.count(body, "colluders"),
            f.amount(body, "worst_case_per_query"),
            f.amount(body, "worst_case_lifetime"),
        )


class ShareTerms(Protocol):
    """What one component's noise share says about itself (``node.mechanisms.NoiseShare``)."""

    @property
    def scale_factor(self) -> int: ...
    @property
    def share_scale(self) -> float: ...
    @property
    def honest(self) -> int: ...
    @property
    def tau_term(self) -> Fraction: ...


@dataclass(frozen=True)
class SecureSessionRecord:
    """One secure sum a node charged for: the session, its parameters, this node's share.

    ``size`` (N) members, a release needs ``threshold`` masked inputs, the
    session assumes ``colluders`` of them work with the coordinator, and so
    ``honest`` = threshold − colluders shares are in any released sum.
    ``scale_factors`` (γ) and ``share_scales`` (σᵢ, in scaled units) have one
    entry per component of the query; ``tau_term`` is KLS21's τ·d summed over
    the components, as charged (see :mod:`tiaki.distributed_noise`).
    """

    session_id: str  # hex
    roster_hash: str  # hex SHA-256 of the members (SessionParameters.roster_hash)
    size: int
    threshold: int
    colluders: int
    honest: int
    scale_factors: tuple[int, ...]
    share_scales: tuple[float, ...]
    tau_term: Fraction

    def __post_init__(self) -> None:
        for key, value, length in (
            ("session_id", self.session_id, SESSION_ID_HEX),
            ("roster_hash", self.roster_hash, ROSTER_HASH_HEX),
        ):
            if len(value) != length or not f.HEX.fullmatch(value):
                raise ChainFormatError(f"'{key}' must be {length} lower-case hex digits")
        if not 1 <= self.threshold <= self.size:
            raise ChainFormatError(f"a threshold of {self.threshold} of {self.size} members")
        if not self.scale_factors or len(self.scale_factors) != len(self.share_scales):
            raise ChainFormatError("one scale factor and one share scale per component")
        if self.honest < 1 or self.tau_term < 0:
            raise ChainFormatError("a secure sum counts at least one honest share, τ at least 0")
        for scale in self.share_scales:
            f.float_text(scale)  # refuses what a body could not hold

    @classmethod
    def of(cls, params: SessionParameters, shares: Sequence[ShareTerms]) -> SecureSessionRecord:
        """The record of ``params`` with this node's share of each component."""
        honest = {s.honest for s in shares}
        if honest != {params.cohort.honest}:
            raise ValueError(
                f"the shares count {sorted(honest)} honest nodes but the session "
                f"{params.cohort.honest}"
            )
        if tuple(s.scale_factor for s in shares) != tuple(params.scale_factors):
            raise ValueError("the shares' scale factors are not the session's")
        if tuple(s.share_scale for s in shares) != tuple(params.share_scales):
            raise ValueError("the shares' scales are not the session's")
        return cls(
            session_id=params.session_id.hex(),
            roster_hash=params.roster_hash(),
            size=params.size,
            threshold=params.threshold,
            colluders=params.colluders,
            honest=params.cohort.honest,
            scale_factors=tuple(params.scale_factors),
            share_scales=tuple(s.share_scale for s in shares),
            tau_term=sum((s.tau_term for s in shares), Fraction(0)),
        )

    def body(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "roster_hash": self.roster_hash,
            "size": self.size,
            "threshold": self.threshold,
            "colluders": self.colluders,
            "honest": self.honest,
            "scale_factors": list(self.scale_factors),
            "share_scales": [f.float_text(s) for s in self.share_scales],
            "tau_term": format_amount(self.tau_term),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SecureSessionRecord:
        scales = body.get("share_scales")
        if not isinstance(scales, list):
            raise ChainFormatError("'share_scales' must be a list of numbers written as text")
        return cls(
            session_id=f.hex_text(body, "session_id", SESSION_ID_HEX),
            roster_hash=f.hex_text(body, "roster_hash", ROSTER_HASH_HEX),
            size=f.count(body, "size"),
            threshold=f.count(body, "threshold"),
            colluders=f.count(body, "colluders"),
            honest=f.count(body, "honest"),
            scale_factors=f.counts(body, "scale_factors"),
            share_scales=tuple(f.read_float(s, "share_scales") for s in scales),
            tau_term=f.amount(body, "tau_term"),
        )


@dataclass(frozen=True)
class SecureRevealRecord:
    """What a node revealed to unmask one secure sum: its ``secure_reveal`` entry.

    ``survivors`` is the survivor list it signed (member indices, sorted);
    ``self_mask_shares`` the members whose self-mask seed shares it revealed
    (the survivors), ``mask_key_shares`` those whose mask-key shares it
    revealed (members that shared keys but sent no input). A member in both,
    at any node of the session, could have had its input unmasked; the
    protocol never lets a node reveal both, and an auditor checks it across
    the members' ledgers.
    """

    session_id: str  # hex
    survivors: tuple[int, ...]
    self_mask_shares: tuple[int, ...]
    mask_key_shares: tuple[int, ...]

    type = "secure_reveal"

    def __post_init__(self) -> None:
        if len(self.session_id) != SESSION_ID_HEX or not f.HEX.fullmatch(self.session_id):
            raise ChainFormatError(f"'session_id' must be {SESSION_ID_HEX} lower-case hex digits")
        for key, members in (
            ("survivors", self.survivors),
            ("self_mask_shares", self.self_mask_shares),
            ("mask_key_shares", self.mask_key_shares),
        ):
            if list(members) != sorted(set(members)) or any(m < 1 for m in members):
                raise ChainFormatError(f"'{key}' must list distinct member indices, in order")

    def body(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "survivors": list(self.survivors),
            "self_mask_shares": list(self.self_mask_shares),
            "mask_key_shares": list(self.mask_key_shares),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SecureRevealRecord:
        return cls(
            session_id=f.hex_text(body, "session_id", SESSION_ID_HEX),
            survivors=f.counts(body, "survivors"),
            self_mask_shares=f.counts(body, "self_mask_shares"),
            mask_key_shares=f.counts(body, "mask_key_shares"),
        )
