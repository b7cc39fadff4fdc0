"""The node's behaviour as plain functions over plain objects; gRPC lives in ``server``.

Everything here takes and returns contract types (:class:`~tiaki.query.Query`,
:class:`~tiaki.answer.Answer`, :class:`~tiaki.node_info.NodeInfo`,
:class:`~tiaki.node_info.NodePlan`); the servicer converts them, once.

Order of work for a query, and why:

1. decode and plan: checks that depend only on the query, schema and policy;
2. ledger pre-check: a repeated id gets its stored answer, an over-budget
   request is refused, before any record is touched;
3. evaluate and release: exact aggregates, then OpenDP noise;
4. ledger charge: one durable transaction re-checks and spends; only after it
   commits does the answer leave. If another request spent the budget in the
   meantime, the fresh release is dropped unseen and the request is refused.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction

from node import answering, engine
from node.config import CoordinatorGrant, NodeConfig
from node.dataset import Dataset
from node.exports import export_ledger, node_signing_key
from node.ledger import PrivacyLedger, StoredAnswer
from node.secure_service import SecureSums
from node.store import load_dataset, store_path
from tiaki import __version__, receipts
from tiaki.answer import Answer
from tiaki.budget import BudgetStatus
from tiaki.convert import answer_from_bytes, answer_to_bytes
from tiaki.errors import InvalidQueryError, NotReadyError, PolicyViolationError
from tiaki.node_info import (
    ColumnInfo,
    NodeInfo,
    NodePlan,
    PlannedComponent,
    SecureAggregationInfo,
)
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.signing import SigningKey

log = logging.getLogger("tiaki.node")


class DatasetHolder:
    """The current in-memory dataset, swapped whole when the store file changes."""

    def __init__(self, config: NodeConfig, loader: Callable[[NodeConfig], Dataset] = load_dataset):
        self._config = config
        self._loader = loader
        self._lock = threading.Lock()
        self._dataset: Dataset | None = None
        self._stamp: tuple[int, int] | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = store_path(self._config).stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def load(self) -> Dataset:
        """Load the store now (raises the store's errors if there is none)."""
        with self._lock:
            stamp = self._file_stamp()
            dataset = self._loader(self._config)
            self._dataset, self._stamp = dataset, stamp
            return dataset

    def reload_if_changed(self) -> bool:
        """Reload after a re-import; keeps serving the old dataset if the new one fails."""
        if self._file_stamp() == self._stamp:
            return False
        try:
            dataset = self.load()
        except Exception:
            log.exception("reloading the record store failed; still serving the previous dataset")
            return False
        log.info("dataset reloaded: version %s, %d records", dataset.version, dataset.n_records)
        return True

    @property
    def current(self) -> Dataset:
        dataset = self._dataset
        if dataset is None:
            raise NotReadyError("this node has no records loaded yet")
        return dataset


class PolicyReloadError(Exception):
    """A re-read config that the running node cannot apply; the running policy stays."""


class NodeService:
    """Answers queries for one node: its config, its records, its ledger."""

    def __init__(
        self,
        config: NodeConfig,
        ledger: PrivacyLedger,
        datasets: DatasetHolder,
        signing_key: SigningKey,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.datasets = datasets
        self.signing_key = signing_key
        # Secure sums are a second way of asking; the rounds live in their own module.
        self.secure_sums = SecureSums(self)

    def close(self) -> None:
        """Close the ledger and the secure-session file (after the server has stopped)."""
        self.secure_sums.close()
        self.ledger.close()

    # ------------------------------------------------------------ info

    def info(self) -> NodeInfo:
        """Public metadata: the queryable columns, the policy's summary and the keys."""
        schema, policy = self.config.schema, self.config.policy
        columns = []
        for name, spec in schema.columns.items():
            if not schema.is_queryable(name):
                continue
            dated = spec.type == "date"
            columns.append(
                ColumnInfo(
                    name=name,
                    type=spec.type,
                    categories=tuple(getattr(spec, "categories", None) or ()),
                    bounds=_floats(schema.numeric_bounds(name)),
                    date_min=str(getattr(spec, "min", None) or "") if dated else "",
                    date_max=str(getattr(spec, "max", None) or "") if dated else "",
                    expression=getattr(spec, "expression", "") if spec.type == "derived" else "",
                )
            )
        try:
            version = self.datasets.current.version
        except NotReadyError:
            version = ""
        return NodeInfo(
            node_id=self.config.node_id,
            version=__version__,
            definition=policy.privacy_definition,
            identifier_column=schema.identifier,
            columns=tuple(columns),
            allowed_kinds=tuple(policy.allowed_kinds),
            max_records_per_client=policy.max_records_per_client,
            per_query_max=policy.per_query_max,
            budget_period=policy.budget.period,
            max_group_by=3,
            max_cells=policy.max_cells,
            dataset_version=version,
            signing_key=self.signing_key.public_text,
            ledger_id=self.ledger.ledger_id,
            secure_aggregation=self._secure_info(),
        )

    def _secure_info(self) -> SecureAggregationInfo | None:
        rules = self.config.policy.secure_aggregation
        if rules is None:
            return None
        remaining = self.ledger.worst_case_status().remaining
        return SecureAggregationInfo(
            rules.min_cohort,
            rules.colluders,
            rules.worst_case.per_query,
            rules.worst_case.lifetime if remaining is None else remaining,
        )

    def apply_config(self, new: NodeConfig) -> list[str]:
        """Swap in the policy of a re-read ``node.yaml``; returns notes for the log.

        What the running node cannot honour without a restart is refused
        whole (:class:`PolicyReloadError`), and the running policy stays: a new
        node id, data directory, schema or privacy definition, and a new
        ``max_records_per_client`` (the loaded records are bounded to the old
        one, and the engine's sensitivities assume the policy's). Server
        settings are read only at start; a change there is a note. The ledger
        chains the new policy in the transaction that starts enforcing it.
        """
        old = self.config
        fixed = {
            "node_id": (old.node_id, new.node_id),
            "data_dir": (old.data_dir, new.data_dir),
            "schema": (old.schema, new.schema),
            "policy.privacy_definition": (
                old.policy.privacy_definition,
                new.policy.privacy_definition,
            ),
            "policy.max_records_per_client": (
                old.policy.max_records_per_client,
                new.policy.max_records_per_client,
            ),
        }
        changed = [name for name, (was, now) in fixed.items() if was != now]
        if changed:
            raise PolicyReloadError(
                f"{', '.join(changed)} changed, which the running node cannot apply; restart "
                "it to use the new file (the running policy stays in force)"
            )
        self.ledger.apply_policy(new.policy)
        self.config = old.model_copy(update={"policy": new.policy})
        return (
            ["server settings changed; they take effect at the next restart"]
            if new.server != old.server
            else []
        )

    def budget(self) -> BudgetStatus:
        return self.ledger.status()

    def export_ledger(self, from_seq: int) -> Iterator[str]:
        """The signed export from entry ``from_seq`` (0 means 1); spends nothing."""
        last, _ = self.ledger.head()
        start = max(1, from_seq)
        if start > last + 1:
            raise InvalidQueryError(
                f"the ledger has entries 1 to {last}; an export cannot start at {from_seq}"
            )
        return export_ledger(self.ledger, self.signing_key, self.config, start)

    # ------------------------------------------------------------ queries

    def plan(self, identity: str, query_id: str, query: Query) -> NodePlan:
        """Cost and noise of ``query`` from schema and policy alone; spends nothing.

        With a ``query_id`` (it may be empty here), also whether ``identity``
        already holds an answer to this query under it (a replay, free); only
        that identity's own ids are looked at, as for :meth:`query`.
        """
        config = self.config  # one policy for the whole plan, even across a reload
        plan = engine.plan(query, config.schema, config.policy)
        definition = config.policy.privacy_definition
        noise = answering.plan_noise(plan, definition)
        clamping = _clamping(plan)
        return NodePlan(
            node_id=config.node_id,
            canonical_query=query.canonical(),
            group_by=query.group_by,
            cells=plan.n_cells,
            components=tuple(
                PlannedComponent(n.name, n.distribution, n.scale, n.accuracy_95) for n in noise
            ),
            charge=PrivacyCost(definition, sum((n.charge for n in noise), Fraction(0))),
            budget=self.ledger.status(),
            replay=bool(query_id)
            and self.ledger.stored_answer(identity, query_id, query.canonical()) is not None,
            bounds=clamping.bounds,
            midpoint=clamping.midpoint,
            grid_unit=clamping.grid_unit,
        )

    def query(
        self,
        identity: str,
        query_id: str,
        analyst: str,
        query: Query,
        grant: CoordinatorGrant | None = None,
    ) -> Released:
        """Answer ``query`` for ``identity``, charging the ledger before returning.

        Privacy unit: one client of this node's records. Charges exactly the
        requested cost (OpenDP's privacy map at the noise scales used is at
        most that, and is recorded beside it); a replay of ``query_id``
        charges nothing. ``grant`` is the policy's entry for the caller: it
        may narrow the query kinds and cap what this identity spends per
        period. ``analyst`` is recorded as the caller's claim.
        """
        config = self.config  # one policy for the whole query, even across a reload
        plan = engine.plan(query, config.schema, config.policy)
        if grant is not None and grant.kinds is not None and query.kind not in grant.kinds:
            raise PolicyViolationError(
                f"{identity!r} may ask only {', '.join(k.value for k in grant.kinds)} queries here"
            )
        cap = grant.budget_cap if grant is not None else None
        canonical = query.canonical()
        stored = self.ledger.check(identity, query_id, canonical, query.cost.amount, cap)
        if stored is not None:
            return self._replay(stored)

        dataset = self.datasets.current
        aggregates = engine.evaluate(plan, dataset, config.schema)
        definition = config.policy.privacy_definition
        cells, cost = answering.release_cells(plan, aggregates, definition)
        clamping = _clamping(plan)
        fresh = Answer(
            query_id=query_id,
            node_id=config.node_id,
            canonical_query=canonical,
            group_by=query.group_by,
            cells=cells,
            charged=PrivacyCost(definition, cost.charge),
            dataset_version=dataset.version,
            replayed=False,
            budget=None,
            privacy_map=PrivacyCost(definition, cost.privacy_map),
            max_records_per_client=plan.k,
            bounds=clamping.bounds,
            midpoint=clamping.midpoint,
            grid_unit=clamping.grid_unit,
        )
        encoded = answer_to_bytes(fresh)  # the one encoding: the ledger's and the reply's
        salt = receipts.new_salt()
        stored_answer, replayed = self.ledger.charge(
            identity=identity,
            query_id=query_id,
            analyst=analyst,
            kind=query.kind.value,
            canonical_query=canonical,
            requested=query.cost.amount,
            charge=cost.charge,
            privacy_map=cost.privacy_map,
            dataset_version=dataset.version,
            response=encoded,
            commitment_salt=salt,
            identity_cap=cap,
        )
        if replayed:
            return self._replay(stored_answer)
        return Released(replace(fresh, budget=self.ledger.status(), commitment_salt=salt), encoded)

    def _replay(self, stored: StoredAnswer) -> Released:
        answer = replace(
            answer_from_bytes(stored.response),
            budget=self.ledger.status(),
            replayed=True,
            commitment_salt=stored.commitment_salt,
        )
        return Released(answer, stored.response)


@dataclass(frozen=True)
class Released:
    """An answer that may leave the node, with its stored form.

    ``stored`` is the bytes the ledger keeps and commits to for it
    (:func:`tiaki.convert.answer_to_bytes`); the reply is made from them, so
    the answer is encoded once.
    """

    answer: Answer
    stored: bytes


@dataclass(frozen=True)
class Clamping:
    """SUM and MEAN: the clamping bounds in force, their midpoint (a mean's shift) and
    the fixed-point grid's step in column units; all None for other kinds."""

    bounds: tuple[float, float] | None = None
    midpoint: float | None = None
    grid_unit: float | None = None


def _clamping(plan: engine.QueryPlan) -> Clamping:
    spec = plan.numeric
    if spec is None or plan.query.kind not in (QueryKind.SUM, QueryKind.MEAN):
        return Clamping()
    return Clamping(
        bounds=(spec.lower, spec.upper),
        midpoint=(spec.lower_int + spec.upper_int) / (2.0 * spec.factor),
        grid_unit=1.0 / spec.factor,
    )


def _floats(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if bounds is None else (float(bounds[0]), float(bounds[1]))


def open_ledger(config: NodeConfig) -> PrivacyLedger:
    """The node's privacy ledger, opened for its configured policy."""
    return PrivacyLedger.open(config.paths.ledger, config.policy, node_id=config.node_id)


def open_service(config: NodeConfig) -> NodeService:
    """Open the ledger and load the records; raises the store's errors if there are none.

    The signing key is created on first start if ``init`` did not make one,
    and the policy and key in force are chained before the first answer.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    key, created = node_signing_key(config)
    if created:
        log.info("created the ledger signing key %s (public key %s)", key.path, key.public_text)
    ledger = open_ledger(config)
    datasets = DatasetHolder(config)
    try:
        ledger.record_policy()
        previous = ledger.signing_key()
        if ledger.record_signing_key(key.public_text) and previous is not None:
            # Not an error (keys may be rotated), but auditors will ask why.
            log.warning(
                "the ledger signing key changed from %s to %s (%s); give auditors the new "
                "public key and the reason",
                previous,
                key.public_text,
                "the old key file was missing, so a new one was created" if created else key.path,
            )
        datasets.load()
    except BaseException:
        ledger.close()
        raise
    return NodeService(config, ledger, datasets, key)
