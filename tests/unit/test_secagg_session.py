"""A secure sum's public parameters, and masks removed exactly with members dropped."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from tiaki.budget import PrivacyDefinition
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.secagg import keys, shamir
from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.masking import decode_vector, encode_vector, mask_vector, unmasked_sum
from tiaki.secagg.session import (
    Member,
    Reveal,
    SessionParameters,
    check_subset,
    survivors_message,
)

QUERY = Query(QueryKind.COUNT, PrivacyCost(PrivacyDefinition.ZCDP, Fraction(1, 2)))


def members(n: int) -> tuple[Member, ...]:
    return tuple(Member(i, f"ngo-{i}", f"ed25519:key{i}") for i in range(1, n + 1))


def params(**changes: object) -> SessionParameters:
    base = SessionParameters(
        session_id=bytes(range(16)),
        query_id="q-1",
        query=QUERY,
        members=members(20),
        threshold=18,
        colluders=1,
        scale_factors=(16,),
        share_scales=(3.5,),
        not_after=2_000_000_000,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_cohort_follows_from_the_threshold_and_colluders() -> None:
    p = params()
    assert (p.size, p.cohort.dropouts, p.cohort.honest) == (20, 2, 17)
    assert p.member("ngo-3").index == 3
    with pytest.raises(SecureAggregationError, match="not a member"):
        p.member("ngo-99")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"session_id": b"short"}, "16 bytes"),
        ({"members": members(1)}, "2 to 1000 members"),
        ({"members": members(3)[1:]}, "indices 1, 2"),
        ({"members": (Member(1, "a", "k1"), Member(2, "a", "k2"))}, "share a node id"),
        ({"members": (Member(1, "a", "k"), Member(2, "b", "k"))}, "share a signing key"),
        ({"threshold": 21}, "from 1 to 20"),
        # 2·10 = 20 is not more than 20 + 0: two survivor lists could each be signed.
        ({"threshold": 10, "colluders": 0}, r"more than \(N \+ colluders\)/2 = 10"),
        ({"threshold": 11, "colluders": 2}, "more than"),
        ({"colluders": -1}, "more than"),
        ({"scale_factors": ()}, "a scale factor per component"),
        ({"scale_factors": (3,)}, "power of two"),
        ({"share_scales": ()}, "a share scale per component"),
        ({"share_scales": (1.5,)}, "at least 2"),
        ({"share_scales": (float("nan"),)}, "at least 2"),
    ],
)
def test_parameters_that_cannot_be_kept_are_refused(changes: dict[str, object], words: str) -> None:
    with pytest.raises(SecureAggregationError, match=words):
        params(**changes)


def test_the_smallest_safe_threshold_is_accepted() -> None:
    # N = 20, c = 2: 2·t > 22, so t = 12 is the least.
    assert params(threshold=12, colluders=2).cohort.honest == 20 - 8 - 2


def test_the_digest_covers_every_parameter() -> None:
    base = params()
    variants = [
        params(session_id=bytes(16)),
        params(query_id="q-2"),
        params(query=dataclasses.replace(QUERY, group_by=("region",))),
        params(members=(*members(19), Member(20, "ngo-20", "ed25519:other"))),
        params(threshold=19),
        params(colluders=0),
        params(scale_factors=(32,)),
        params(share_scales=(3.5000000000000004,)),
        params(not_after=2_000_000_001),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == len(variants) + 1
    assert params().digest() == base.digest()
    assert variants[3].roster_hash() != base.roster_hash()
    assert variants[4].roster_hash() == base.roster_hash()


def test_a_survivor_list_signs_the_same_whatever_its_order_and_differs_by_session() -> None:
    d = params().digest()
    assert survivors_message(d, [3, 1, 2]) == survivors_message(d, [1, 2, 3])
    assert survivors_message(d, [1, 2]) != survivors_message(d, [1, 2, 3])
    assert survivors_message(params(query_id="x").digest(), [1, 2]) != survivors_message(d, [1, 2])


def test_a_reveal_never_holds_both_kinds_for_one_member() -> None:
    Reveal(1, {2: 5}, {3: 7})
    with pytest.raises(SecureAggregationError, match=r"both kinds of share for members \[2\]"):
        Reveal(1, {2: 5}, {2: 7})


def test_subsets_are_checked() -> None:
    assert check_subset([3, 1], [1, 2, 3], "survivors", 2) == (1, 3)
    with pytest.raises(SecureAggregationError, match="twice"):
        check_subset([1, 1], [1, 2], "survivors", 1)
    with pytest.raises(SecureAggregationError, match=r"members \[4\]"):
        check_subset([1, 4], [1, 2, 3], "survivors", 1)
    with pytest.raises(SecureAggregationError, match="only 1 survivors"):
        check_subset([1], [1, 2, 3], "survivors", 2)


def test_masks_come_off_exactly_when_members_drop_after_sharing_keys() -> None:
    n, threshold, length, session = 6, 4, 50, bytes(16)
    rng = np.random.default_rng(7)
    values = {u: rng.integers(-(2**40), 2**40, length, dtype=np.int64) for u in range(1, n + 1)}
    mask_private = {u: keys.generate() for u in values}
    mask_public = {u: keys.public_bytes(k) for u, k in mask_private.items()}
    self_seed = {u: shamir.random_element() for u in values}
    masked = {
        u: mask_vector(values[u], self_seed[u], mask_private[u], mask_public, session, u)
        for u in values
    }
    for u in values:  # alone, a masked vector is not its values
        assert not np.array_equal(masked[u].view(np.int64), values[u])
    dropped = {2, 5}  # shared keys, sent no masked input
    survivors = sorted(set(values) - dropped)
    # The coordinator rebuilds the dropped members' mask keys from shares.
    holders = list(values)
    rebuilt = {}
    for v in dropped:
        shares = shamir.split(keys.private_element(mask_private[v]), threshold, holders)
        some = {x: shares[x] for x in survivors[:threshold]}
        rebuilt[v] = keys.from_element(shamir.reconstruct(some, threshold))
    total = unmasked_sum(
        {u: decode_vector(encode_vector(masked[u]), length) for u in survivors},
        {u: self_seed[u] for u in survivors},
        rebuilt,
        mask_public,
        session,
        length,
    )
    assert np.array_equal(total, sum(values[u] for u in survivors))
    with pytest.raises(SecureAggregationError, match="never be rebuilt"):
        unmasked_sum(
            {u: masked[u] for u in survivors},
            {u: self_seed[u] for u in survivors},
            {survivors[0]: mask_private[survivors[0]]},
            mask_public,
            session,
            length,
        )
    with pytest.raises(SecureAggregationError, match="missing or extra"):
        unmasked_sum({u: masked[u] for u in survivors}, {}, rebuilt, mask_public, session, length)


def test_a_masked_vector_on_the_wire_has_its_declared_length() -> None:
    vector = np.arange(4, dtype=np.uint64)
    assert np.array_equal(decode_vector(encode_vector(vector), 4), vector)
    with pytest.raises(SecureAggregationError, match="32 bytes, not 24"):
        decode_vector(encode_vector(vector)[:24], 4)
