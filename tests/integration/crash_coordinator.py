"""A coordinator that asks the federation question after question until it is killed.

``python crash_coordinator.py FEDERATION.yaml TAG`` asks question ``TAG-0``,
``TAG-1``, ... (query id = that name; the query is :func:`question` of the
index) through :func:`coordinator.federated.ask_federation`, printing
``asking ID`` before each question and ``done ID`` after it. The test SIGKILLs
it at random moments and then checks the mirror ledger against the nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from coordinator.config import load_federation
from coordinator.fanout import Federation
from coordinator.federated import ask_federation
from coordinator.mirror import MirrorLedger
from tiaki.budget import PrivacyDefinition
from tiaki.query import PrivacyCost, Query, QueryKind


def question(index: int) -> Query:
    """The question with this index: a few kinds and costs, so charges differ."""

    def eps(text: str) -> PrivacyCost:
        return PrivacyCost.parse(PrivacyDefinition.PURE, text)

    shapes = (
        Query(QueryKind.COUNT, eps("0.05"), group_by=("service",)),
        Query(QueryKind.COUNT_CLIENTS, eps("0.03")),
        Query(QueryKind.MEAN, eps("0.04"), column="sessions"),
    )
    return shapes[index % len(shapes)]


def query_index(query_id: str) -> int:
    """The index a query id ``TAG-N`` was made from."""
    return int(query_id.rpartition("-")[2])


def main(argv: list[str]) -> int:
    config = load_federation(Path(argv[0]))
    tag = argv[1]
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        print("ready", flush=True)
        for index in range(1_000_000):
            query_id = f"{tag}-{index}"
            print("asking", query_id, flush=True)
            ask_federation(
                federation,
                question(index),
                analyst=config.analyst,
                mirror=mirror,
                query_id=query_id,
            )
            print("done", query_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
