"""The one error the secure-aggregation primitives raise.

Every input check and every failed authentication raises
:class:`SecureAggregationError`, so the protocol code around them handles one
type whether a value came from its own bug or from a hostile peer: shares,
public keys and sealed messages all arrive from other parties through the
coordinator. Messages name public things (indices, lengths, types), never a
secret, a share or a key.
"""

from __future__ import annotations

from tiaki.errors import TiakiError


class SecureAggregationError(TiakiError):
    """A secure-aggregation value or message is malformed, out of range or not authentic.

    It has no wire reason of its own yet and so keeps :class:`TiakiError`'s:
    a reason a node sends belongs in the reason table of
    ``tiaki/v1/node.proto`` and the wire-error tables, which get it when a
    node first sends this error across the wire.
    """
