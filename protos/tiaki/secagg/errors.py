"""The one error the secure-aggregation code raises, re-exported for its modules.

It lives in :mod:`tiaki.errors` with every other error a node sends (reason
``SESSION_REFUSED``, status FAILED_PRECONDITION): a coordinator rebuilds it
from the wire like the rest.
"""

from __future__ import annotations

from tiaki.errors import SecureAggregationError

__all__ = ["SecureAggregationError"]
