"""The in-memory, columnar form of a node's records, ready for fast queries.

Loaded once from the store (and again after a re-import). Per-client bounding
has already been applied: each client keeps at most ``max_records_per_client``
records, chosen by the client's own records alone (most recent first, ties
broken by a keyed hash with the node's secret salt). Records are sorted by
client, so one client's records are contiguous, most-preferred first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# Missing dates are this sentinel (days since 1970-01-01 are int32).
MISSING_DATE = np.iinfo(np.int32).min


@dataclass(frozen=True)
class Dataset:
    """Columns as numpy arrays, one entry per kept record.

    - ``client``: int64 client codes 0..n_clients-1, non-decreasing.
    - ``categorical[name]``: int16/int32 codes indexing the schema's category list.
    - ``numeric[name]``: float64 values (integer columns hold whole numbers),
      NaN where missing; derived columns are included, computed at load.
    - ``dates[name]``: int32 days since 1970-01-01, ``MISSING_DATE`` where missing.
    """

    version: str
    max_records_per_client: int
    client: npt.NDArray[np.int64]
    categorical: dict[str, npt.NDArray[np.integer]] = field(default_factory=dict)
    numeric: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    dates: dict[str, npt.NDArray[np.int32]] = field(default_factory=dict)
    records_before_bounding: int = 0

    @property
    def n_records(self) -> int:
        return int(self.client.shape[0])

    @property
    def n_clients(self) -> int:
        return int(self.client[-1]) + 1 if self.client.size else 0

    @classmethod
    def empty(cls, max_records_per_client: int) -> Dataset:
        return cls(
            version="empty",
            max_records_per_client=max_records_per_client,
            client=np.zeros(0, dtype=np.int64),
        )
