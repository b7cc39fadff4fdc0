"""Secure-sum messages survive the wire exactly, and a malformed share is refused."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tiaki.budget import PrivacyDefinition
from tiaki.query import PrivacyCost, Query, QueryKind
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
from tiaki.secagg.wire import (
    advert_from_proto,
    advert_to_proto,
    masked_input_from_proto,
    masked_input_to_proto,
    reveal_from_proto,
    reveal_to_proto,
    sealed_from_proto,
    sealed_to_proto,
    session_from_proto,
    session_to_proto,
)
from tiaki.v1 import node_pb2 as pb

PARAMS = SessionParameters(
    session_id=bytes(range(16)),
    query_id="q-7",
    query=Query(
        QueryKind.COUNT, PrivacyCost(PrivacyDefinition.ZCDP, Fraction(1, 8)), group_by=("region",)
    ),
    members=tuple(Member(i, f"ngo-{i}", f"ed25519:k{i}") for i in range(1, 6)),
    threshold=4,
    colluders=1,
    scale_factors=(8,),
    share_scales=(2.0000000000000004,),
    not_after=1_900_000_060,
    analyst="jo",
)


def test_a_session_round_trips_to_the_same_digest() -> None:
    again = session_from_proto(
        pb.SecureSession.FromString(session_to_proto(PARAMS).SerializeToString())
    )
    assert again == PARAMS and again.digest() == PARAMS.digest()


def test_round_messages_round_trip() -> None:
    advert = KeyAdvert(2, bytes(32), bytes(range(32)), "c2lnbmF0dXJl")
    assert advert_from_proto(advert_to_proto(advert)) == advert
    sealed = SealedShares(2, 3, b"\x01" * 100)
    assert sealed_from_proto(sealed_to_proto(sealed)) == sealed
    masked = MaskedInput(
        3,
        bytes(range(16)),
        (ComponentShare("count", 2, 2.5),),
        (CellKey(("north",)), CellKey(("south",))),
        Fraction(1, 8),
        Fraction(9, 8) + Fraction(1, 2**60),
    )
    assert masked_input_from_proto(masked_input_to_proto(masked)) == masked
    reveal = Reveal(3, {1: 2**254 + 5, 3: 0}, {2: 12345})
    assert reveal_from_proto(reveal_to_proto(reveal)) == reveal


def test_a_share_of_the_wrong_size_is_refused() -> None:
    msg = pb.Reveal(index=1, self_mask_shares=[pb.RevealedShare(member=1, share=b"\x00" * 31)])
    with pytest.raises(SecureAggregationError, match="32 bytes, not 31"):
        reveal_from_proto(msg)
    with pytest.raises(SecureAggregationError, match="not an exact amount"):
        masked_input_from_proto(pb.MaskedInput(index=1, aggregate=pb.PrivacyCost(rho="x")))
