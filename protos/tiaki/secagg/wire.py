"""Secure-sum messages to and from protobuf: the one place they are converted.

Kept beside :mod:`tiaki.convert` (which holds every other message) because
these are many and belong together; nothing else in the contract package
speaks protobuf.
"""

from __future__ import annotations

from fractions import Fraction

from tiaki.budget import format_amount, read_amount
from tiaki.convert import query_from_proto, query_to_proto
from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.session import (
    CellKey,
    ComponentShare,
    KeyAdvert,
    MaskedInput,
    Member,
    Reveal,
    SealedShares,
    SessionParameters,
)
from tiaki.v1 import node_pb2 as pb

SHARE_BYTES = 32


def session_to_proto(params: SessionParameters) -> pb.SecureSession:
    return pb.SecureSession(
        session_id=params.session_id,
        query=query_to_proto(params.query, query_id=params.query_id, analyst=params.analyst),
        members=[
            pb.SecureSessionMember(index=m.index, node_id=m.node_id, signing_key=m.signing_key)
            for m in params.members
        ],
        threshold=params.threshold,
        colluders=params.colluders,
        scale_factors=list(params.scale_factors),
        share_scales=list(params.share_scales),
        not_after=params.not_after,
    )


def session_from_proto(msg: pb.SecureSession) -> SessionParameters:
    """The session a request carries; raises InvalidQueryError or SecureAggregationError."""
    query_id, analyst, query = query_from_proto(msg.query)
    return SessionParameters(
        session_id=bytes(msg.session_id),
        query_id=query_id,
        query=query,
        members=tuple(Member(m.index, m.node_id, m.signing_key) for m in msg.members),
        threshold=msg.threshold,
        colluders=msg.colluders,
        scale_factors=tuple(msg.scale_factors),
        share_scales=tuple(msg.share_scales),
        not_after=msg.not_after,
        analyst=analyst,
    )


def advert_to_proto(advert: KeyAdvert) -> pb.KeyAdvert:
    return pb.KeyAdvert(
        index=advert.index,
        encryption_key=advert.encryption_key,
        mask_key=advert.mask_key,
        signature=advert.signature,
    )


def advert_from_proto(msg: pb.KeyAdvert) -> KeyAdvert:
    return KeyAdvert(msg.index, bytes(msg.encryption_key), bytes(msg.mask_key), msg.signature)


def sealed_to_proto(sealed: SealedShares) -> pb.SealedShares:
    return pb.SealedShares(sender=sealed.sender, recipient=sealed.recipient, sealed=sealed.sealed)


def sealed_from_proto(msg: pb.SealedShares) -> SealedShares:
    return SealedShares(msg.sender, msg.recipient, bytes(msg.sealed))


def masked_input_to_proto(masked: MaskedInput) -> pb.MaskedInput:
    """Charges are ρ: only zCDP nodes take part in secure sums."""
    return pb.MaskedInput(
        index=masked.index,
        vector=masked.vector,
        components=[
            pb.ComponentShare(name=c.name, length=c.length, share_scale=c.share_scale)
            for c in masked.components
        ],
        cells=[pb.CellKey(group=list(c.group), bin=c.bin) for c in masked.cells],
        aggregate=pb.PrivacyCost(rho=format_amount(masked.aggregate)),
        worst_case=pb.PrivacyCost(rho=format_amount(masked.worst_case)),
    )


def masked_input_from_proto(msg: pb.MaskedInput) -> MaskedInput:
    return MaskedInput(
        index=msg.index,
        vector=bytes(msg.vector),
        components=tuple(ComponentShare(c.name, c.length, c.share_scale) for c in msg.components),
        cells=tuple(CellKey(tuple(c.group), c.bin) for c in msg.cells),
        aggregate=_rho(msg.aggregate),
        worst_case=_rho(msg.worst_case),
    )


def _rho(msg: pb.PrivacyCost) -> Fraction:
    try:
        return read_amount(msg.rho) if msg.rho else Fraction(0)
    except (ValueError, ZeroDivisionError):
        raise SecureAggregationError(f"a charge {msg.rho[:40]!r} is not an exact amount") from None


def _share_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def _share_value(raw: bytes) -> int:
    if len(raw) != SHARE_BYTES:
        raise SecureAggregationError(f"a revealed share is {SHARE_BYTES} bytes, not {len(raw)}")
    return int.from_bytes(raw, "big")


def reveal_to_proto(reveal: Reveal) -> pb.Reveal:
    return pb.Reveal(
        index=reveal.index,
        self_mask_shares=[
            pb.RevealedShare(member=m, share=_share_bytes(v))
            for m, v in sorted(reveal.self_mask_shares.items())
        ],
        mask_key_shares=[
            pb.RevealedShare(member=m, share=_share_bytes(v))
            for m, v in sorted(reveal.mask_key_shares.items())
        ],
    )


def reveal_from_proto(msg: pb.Reveal) -> Reveal:
    return Reveal(
        msg.index,
        {s.member: _share_value(s.share) for s in msg.self_mask_shares},
        {s.member: _share_value(s.share) for s in msg.mask_key_shares},
    )
