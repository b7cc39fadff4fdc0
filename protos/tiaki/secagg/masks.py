"""Masks over the ring Z_(2^64): what a node adds to its vector so that only the sum shows.

A node's masked vector is ``x + PRG(b) + Σ_v sign(u, v) · PRG(s_uv)``, all mod
2^64: ``b`` its self-mask seed, ``s_uv`` the seed it agreed with node ``v``.
Each pairwise mask is added by one end of the pair and subtracted by the
other (:func:`pairwise_sign`), so over all nodes they cancel; the coordinator
subtracts the self-masks it rebuilds, and what remains is ``Σ x`` mod 2^64,
which decodes exactly as long as the true sum fits in an int64.

Vectors are numpy ``uint64`` arrays: numpy's uint64 arithmetic on arrays wraps
mod 2^64 without a warning, which is exactly the ring. Every function checks
dtypes, because numpy silently turns ``uint64 + int64`` into float64, which
would lose the low bits of a mask and with them the sum.

PRG(seed) is the ChaCha20 keystream under a key derived from the seed, read
as little-endian uint64 words: a seed is a field element (so it can be
Shamir-shared) or an agreed key, and HKDF keeps either from ever being used
directly as a cipher key.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.shamir import is_element

SEED_BYTES = 32
MASK_INFO = b"tiaki/secagg/v1/mask"
WORD_BYTES = 8
# ChaCha20 as RFC 8439 defines it has a 32-bit block counter: 2**32 blocks of
# 64 bytes, eight words each, before the stream would repeat.
MAX_LENGTH = 2**32 * 8
# A derived key makes one stream, so the nonce and the initial counter are zero:
# cryptography's ChaCha20 takes them as 16 bytes, a 4-byte little-endian
# counter then the 12-byte nonce.
_ZERO_NONCE = bytes(16)


def seed_bytes(element: int) -> bytes:
    """The 32-byte little-endian encoding of a field element, to use as a seed."""
    if not is_element(element):
        raise SecureAggregationError("a seed must be an integer in [0, 2**255 - 19)")
    return element.to_bytes(SEED_BYTES, "little")


def mask_stream(seed: bytes, length: int) -> NDArray[np.uint64]:
    """``length`` pseudo-random uint64 words from a 32-byte seed.

    The words are the ChaCha20 keystream (RFC 8439) under the key
    HKDF-SHA256(seed, info ``tiaki/secagg/v1/mask``), read little-endian.
    No salt: the seed is already uniformly random, and HKDF's job here is to
    separate its use as a mask from its use as a Shamir secret or key.
    """
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise SecureAggregationError(f"a mask seed is {SEED_BYTES} bytes")
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= MAX_LENGTH:
        raise SecureAggregationError(f"a mask length is an integer in 0..{MAX_LENGTH}")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MASK_INFO).derive(seed)
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(WORD_BYTES * length)) + encryptor.finalize()
    words: NDArray[np.uint64] = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    return words


def _check(values: object, dtype: type[np.generic], name: str) -> None:
    # One-dimensional only: a 0-d array would come back from numpy as a scalar.
    if not isinstance(values, np.ndarray) or values.dtype != dtype or values.ndim != 1:
        got = (
            f"a {values.ndim}-d {values.dtype} array"
            if isinstance(values, np.ndarray)
            else type(values).__name__
        )
        raise SecureAggregationError(
            f"{name} must be a 1-d numpy {np.dtype(dtype).name} array, not {got}"
        )


def to_ring(values: NDArray[np.int64]) -> NDArray[np.uint64]:
    """Signed values into the ring, by two's complement: -1 is 2^64 - 1."""
    _check(values, np.int64, "values")
    ring: NDArray[np.uint64] = values.view(np.uint64).copy()
    return ring


def from_ring(values: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Ring elements back to signed values: the inverse of :func:`to_ring`.

    A sum of signed values wraps in the ring exactly as in two's complement,
    so it decodes to the true sum whenever that fits in an int64 (whatever
    the partial sums did on the way).
    """
    _check(values, np.uint64, "ring values")
    signed: NDArray[np.int64] = values.view(np.int64).copy()
    return signed


def _check_pair(a: object, b: object) -> None:
    _check(a, np.uint64, "the first vector")
    _check(b, np.uint64, "the second vector")
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    if a.shape != b.shape:
        raise SecureAggregationError(f"vectors of shapes {a.shape} and {b.shape} cannot be added")


def add(a: NDArray[np.uint64], b: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """``a + b`` mod 2^64."""
    _check_pair(a, b)
    total: NDArray[np.uint64] = np.add(a, b, dtype=np.uint64)
    return total


def subtract(a: NDArray[np.uint64], b: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """``a - b`` mod 2^64."""
    _check_pair(a, b)
    difference: NDArray[np.uint64] = np.subtract(a, b, dtype=np.uint64)
    return difference


def pairwise_sign(me: int, peer: int) -> int:
    """+1 if ``me`` adds the mask it shares with ``peer``, -1 if it subtracts it.

    The lower index adds and the higher subtracts, so the two copies of
    PRG(s_uv) cancel in the sum.
    """
    for index in (me, peer):
        if not isinstance(index, int) or isinstance(index, bool):
            raise SecureAggregationError(f"node indices are integers, not {index!r:.40}")
    if me == peer:
        raise SecureAggregationError(f"node {me} shares no pairwise mask with itself")
    return 1 if me < peer else -1
