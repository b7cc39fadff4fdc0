"""Per-client bounding and the record store's keyed hashes, all keyed with the node's salt.

Each record's rank within its own client orders it most recent first by the
schema's ``recency`` date (missing dates last), ties broken by a keyed hash of
the record (HMAC-SHA256 with the node's secret salt), or by the keyed hash
alone without a recency column. A rank thus depends only on that client's own
records and the salt, so adding or removing one client cannot change which
records anybody else contributes: that is what makes the sensitivity bounds of
:mod:`node.sensitivity` hold for the one-client privacy unit. Identical
duplicate records tie exactly, but then it does not matter which copy is kept.
Loading keeps the records whose rank is below ``max_records_per_client``.

Clients are numbered 0..C-1 in the order of a keyed hash of their identifier,
which reveals nothing about the identifiers or the order of the source. The
content hash over the keyed record hashes stays in the node.
:mod:`node.store` says where each of these is kept.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from node.dataset import MISSING_DATE

_RANK_DOMAIN = b"tiaki-rank\x00"
_CLIENT_DOMAIN = b"tiaki-client\x00"
_VERSION_DOMAIN = b"tiaki-version-1\x00"


def record_digest(salt: bytes, canonical: bytes) -> bytes:
    """A record's 128-bit keyed hash: its tie-break within its client and its share of the version.

    Keyed with the node's secret salt, so nobody outside the node can predict
    or steer which of a client's equally recent records are kept.
    """
    return hmac.digest(salt, _RANK_DOMAIN + canonical, "sha256")[:16]


def keyed_words(digests: bytes) -> npt.NDArray[np.uint64]:
    """Concatenated 16-byte digests as an (n, 2) array of big-endian words, for sorting."""
    return np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)


def client_codes(ids: Sequence[str], salt: bytes) -> tuple[npt.NDArray[np.int64], int]:
    """Each record's client code, 0..C-1, and C.

    Clients are numbered in the order of a keyed hash of their identifier, so
    the codes (and the order of the loaded arrays) reveal nothing about the
    identifiers or the order of the source file.
    """
    first_seen: dict[str, int] = {}
    provisional = np.fromiter(
        (first_seen.setdefault(i, len(first_seen)) for i in ids), dtype=np.int64, count=len(ids)
    )
    hashes = b"".join(
        hmac.digest(salt, _CLIENT_DOMAIN + ident.encode("utf-8", "surrogatepass"), "sha256")[:16]
        for ident in first_seen
    )
    words = keyed_words(hashes)
    code_of = np.empty(len(first_seen), dtype=np.int64)
    code_of[np.lexsort((words[:, 1], words[:, 0]))] = np.arange(len(first_seen))
    return code_of[provisional], len(first_seen)


def record_ranks(
    client: npt.NDArray[np.int64],
    recency: npt.NDArray[np.int32] | None,
    tiebreak: npt.NDArray[np.uint64],
) -> npt.NDArray[np.int32]:
    """Each record's 0-based rank within its client: latest recency first, missing last.

    ``tiebreak`` is the (n, 2) array of keyed record digests, which decides
    between equally recent records (and alone, without a recency column). The
    sort looks only at a record's own client code, recency and digest, so a
    client's ranks cannot depend on any other client's records: the records a
    client contributes are chosen without looking at anyone else's data, as the
    one-client privacy unit requires.
    """
    n = client.shape[0]
    keys: list[npt.NDArray[np.generic]] = [tiebreak[:, 1], tiebreak[:, 0]]
    if recency is not None:
        days = recency.astype(np.int64)
        keys.append(np.where(recency == MISSING_DATE, np.iinfo(np.int64).max, -days))
    keys.append(client)
    order = np.lexsort(keys)
    sorted_client = client[order]
    starts = np.flatnonzero(np.r_[True, sorted_client[1:] != sorted_client[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int32)
    ranks[order] = np.arange(n) - group_start
    return ranks


def content_version(fingerprint: str, tiebreak: npt.NDArray[np.uint64]) -> str:
    """20 hex digits (80 bits) over the schema fingerprint and the sorted record digests.

    Sorting makes it independent of source row order; duplicates count. It is
    kept inside the node (``content_hash`` in the store's metadata) and never
    published: it would tell anyone who saw two of them whether the records
    changed.
    """
    ordered = tiebreak[np.lexsort((tiebreak[:, 1], tiebreak[:, 0]))].astype(">u8")
    content = hashlib.sha256(_VERSION_DOMAIN + fingerprint.encode("ascii"))
    content.update(ordered.tobytes())
    return content.hexdigest()[:20]
