"""What a federated question produces: per-node outcomes and combined cells."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from tiaki.answer import Answer
from tiaki.budget import format_amount, read_amount
from tiaki.query import Query

DP_NOISE_ONLY = (
    "Confidence intervals cover the differential-privacy noise only, not sampling "
    "or data-quality error."
)


class NodeStatus(StrEnum):
    """Every state a node's part in a question can be in, as the mirror and outputs say it."""

    PENDING = "pending"  # recorded before asking; no outcome yet (or the coordinator stopped)
    ANSWERED = "answered"  # answered now, and charged
    REPLAYED = "replayed"  # the stored answer to this query id; nothing charged now
    REFUSED = "refused"  # the node said no (policy, budget, schema); nothing charged
    SKIPPED = "skipped"  # not asked: pre-flight showed it would refuse, or --require-all
    UNREACHABLE = "unreachable"  # no answer before the deadline, after retries
    ERROR = "error"  # the node failed internally


@dataclass(frozen=True)
class NodeOutcome:
    """What happened at one node for one question."""

    node: str
    status: NodeStatus
    reason: str = ""
    charged: Fraction | None = None
    answer: Answer | None = None
    attempts: int = 0
    seconds: float = 0.0

    @property
    def answered(self) -> bool:
        return self.status in (NodeStatus.ANSWERED, NodeStatus.REPLAYED)


@dataclass(frozen=True)
class CombinedCell:
    """One federation-wide estimate with its 95% confidence interval."""

    group: tuple[str, ...]
    bin: str
    estimate: float
    half_width: float  # 95% CI is estimate ± half_width (clipped to public bounds)
    ci_low: float
    ci_high: float
    method: str  # how the interval was derived, in words
    nodes: int  # how many nodes' answers this cell combines
    # Why this cell should not be read as an estimate (empty: nothing found);
    # post-processing of released values, see coordinator.combine.
    unreliable: tuple[str, ...] = ()

    @property
    def reliable(self) -> bool:
        return not self.unreliable


@dataclass(frozen=True)
class SecureSummary:
    """What the analyst is told about the session behind a secure answer."""

    session_id: str
    size: int
    threshold: int
    colluders: int
    honest: int
    summed: int  # inputs in the released total
    error_ratio: float  # its noise's standard deviation over one central release's
    charges: Mapping[str, tuple[Fraction, Fraction]]  # node name -> (aggregate, worst case)
    stopped: str = ""  # why the session aborted, releasing nothing ("" if it released)

    def to_json(self) -> str:
        """The summary as the mirror keeps it (amounts as exact decimal text)."""
        doc = {
            "session_id": self.session_id,
            "size": self.size,
            "threshold": self.threshold,
            "colluders": self.colluders,
            "honest": self.honest,
            "summed": self.summed,
            "error_ratio": self.error_ratio if math.isfinite(self.error_ratio) else None,
            "charges": {
                node: [format_amount(agg), format_amount(worst)]
                for node, (agg, worst) in self.charges.items()
            },
            "stopped": self.stopped,
        }
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SecureSummary:
        doc = json.loads(text)
        ratio = doc["error_ratio"]
        return cls(
            session_id=str(doc["session_id"]),
            size=int(doc["size"]),
            threshold=int(doc["threshold"]),
            colluders=int(doc["colluders"]),
            honest=int(doc["honest"]),
            summed=int(doc["summed"]),
            error_ratio=math.nan if ratio is None else float(ratio),
            charges={
                str(node): (read_amount(agg), read_amount(worst))
                for node, (agg, worst) in doc["charges"].items()
            },
            stopped=str(doc["stopped"]),
        )


@dataclass(frozen=True)
class FederatedAnswer:
    """The combined answer to one question, and who contributed to it."""

    query_id: str
    query: Query
    group_by: tuple[str, ...]
    cells: tuple[CombinedCell, ...]
    outcomes: tuple[NodeOutcome, ...]
    released: bool  # False when --require-all was given and some node did not answer
    # Asked as a secure sum: the session behind the one combined input (else None).
    secure: SecureSummary | None = None

    @property
    def answered_nodes(self) -> tuple[str, ...]:
        return tuple(o.node for o in self.outcomes if o.answered)

    @property
    def coverage(self) -> str:
        names = ", ".join(self.answered_nodes) or "none"
        return f"{len(self.answered_nodes)} of {len(self.outcomes)} nodes ({names})"

    @property
    def total_charged(self) -> Fraction:
        return sum((o.charged for o in self.outcomes if o.charged is not None), Fraction(0))
