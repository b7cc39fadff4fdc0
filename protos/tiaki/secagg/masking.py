"""How a node masks its vector and how the coordinator removes the masks: one definition.

Node u sends y_u = x_u + PRG(b_u) + Σ_{v ≠ u} sign(u, v)·PRG(s_uv) mod 2^64,
over the members v that shared keys with it (round 1's list). s_uv is the
key u and v agree from their mask keys; b_u its self-mask seed. The
coordinator sums the survivors' y, subtracts each survivor's PRG(b_u)
(rebuilt from shares) and, for each member v that shared keys but sent no
input, the pairwise masks the survivors added for it (rebuilt from v's
shared mask key). What is left is Σ x_u over the survivors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from tiaki.secagg import keys, masks
from tiaki.secagg.errors import SecureAggregationError

MASK_PURPOSE = "mask"
SEAL_PURPOSE = "seal"
SHARES_ROUND = "share-keys"


def self_mask(seed: int, length: int) -> NDArray[np.uint64]:
    return masks.mask_stream(masks.seed_bytes(seed), length)


def pair_mask(
    mask_private: X25519PrivateKey,
    peer_mask_key: bytes,
    session_id: bytes,
    me: int,
    peer: int,
    length: int,
) -> NDArray[np.uint64]:
    """PRG(s_uv): the same stream at both ends of the pair."""
    seed = keys.agreed_key(mask_private, peer_mask_key, session_id, MASK_PURPOSE, me, peer)
    return masks.mask_stream(seed, length)


def _apply(total: NDArray[np.uint64], stream: NDArray[np.uint64], sign: int) -> NDArray[np.uint64]:
    return masks.add(total, stream) if sign > 0 else masks.subtract(total, stream)


def mask_vector(
    values: NDArray[np.int64],
    self_seed: int,
    mask_private: X25519PrivateKey,
    peer_mask_keys: Mapping[int, bytes],
    session_id: bytes,
    me: int,
) -> NDArray[np.uint64]:
    """y_u: ``values`` in the ring plus the self-mask and a pairwise mask per peer."""
    length = len(values)
    total = masks.add(masks.to_ring(values), self_mask(self_seed, length))
    for peer, peer_key in sorted(peer_mask_keys.items()):
        if peer == me:
            continue
        stream = pair_mask(mask_private, peer_key, session_id, me, peer, length)
        total = _apply(total, stream, masks.pairwise_sign(me, peer))
    return total


def unmasked_sum(
    masked: Mapping[int, NDArray[np.uint64]],
    self_seeds: Mapping[int, int],
    dropped_mask_keys: Mapping[int, X25519PrivateKey],
    mask_keys: Mapping[int, bytes],
    session_id: bytes,
    length: int,
) -> NDArray[np.int64]:
    """Σ x_u over the survivors (the keys of ``masked``), exactly, as int64.

    ``self_seeds`` must hold every survivor's b_u; ``dropped_mask_keys`` the
    rebuilt mask key of every member that shared keys but is not a survivor;
    ``mask_keys`` every survivor's public mask key.
    """
    survivors = sorted(masked)
    if set(self_seeds) != set(survivors):
        raise SecureAggregationError("a self-mask seed is missing or extra for the survivors")
    if set(dropped_mask_keys) & set(survivors):
        raise SecureAggregationError("a survivor's mask key must never be rebuilt")
    total = np.zeros(length, dtype=np.uint64)
    for u in survivors:
        if masked[u].shape != (length,):
            raise SecureAggregationError(f"member {u}'s masked input has the wrong length")
        total = masks.add(total, masked[u])
        total = masks.subtract(total, self_mask(self_seeds[u], length))
    for v, private in sorted(dropped_mask_keys.items()):
        for u in survivors:
            # Survivor u added sign(u, v)·PRG(s_uv); take it away again.
            stream = pair_mask(private, mask_keys[u], session_id, v, u, length)
            total = _apply(total, stream, -masks.pairwise_sign(u, v))
    return masks.from_ring(total)


def decode_vector(raw: bytes, length: int) -> NDArray[np.uint64]:
    """A masked vector from the wire: ``length`` little-endian uint64 words."""
    if len(raw) != 8 * length:
        raise SecureAggregationError(
            f"a masked vector of {length} words is {8 * length} bytes, not {len(raw)}"
        )
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def encode_vector(vector: NDArray[np.uint64]) -> bytes:
    return vector.astype("<u8").tobytes()
