"""What a node releases: noisy components per cell, and the charge."""

from __future__ import annotations

from dataclasses import dataclass

from tiaki.budget import BudgetStatus
from tiaki.query import PrivacyCost


@dataclass(frozen=True)
class Component:
    """One noisy quantity released by one OpenDP measurement."""

    name: str
    value: float
    distribution: str
    scale: float
    accuracy_95: float


@dataclass(frozen=True)
class Cell:
    """One group (and histogram bin) of an answer."""

    group: tuple[str, ...]
    bin: str
    value: float
    accuracy_95: float
    components: tuple[Component, ...]


@dataclass(frozen=True)
class Answer:
    """A node's differentially private answer to one query."""

    query_id: str
    node_id: str
    canonical_query: str
    group_by: tuple[str, ...]
    cells: tuple[Cell, ...]
    charged: PrivacyCost
    dataset_version: str
    replayed: bool
    budget: BudgetStatus | None
    # OpenDP's privacy map at the scales used (at most ``charged``); None from
    # nodes that predate recording it.
    privacy_map: PrivacyCost | None = None
    # Sent only to the asker: opens the ledger's commitment to this answer.
    commitment_salt: bytes = b""
    # Each client counted at most this many records (0: not reported).
    max_records_per_client: int = 0
    # SUM, MEAN: the clamping bounds in force and their midpoint (a mean's shift),
    # and the fixed-point grid's step in column units (1 for integer columns):
    # values are summed as integer multiples of it, a mean's shifted sum of half it.
    bounds: tuple[float, float] | None = None
    midpoint: float | None = None
    grid_unit: float | None = None
