"""The node's behaviour as plain functions over plain objects; gRPC lives in ``server``.

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
from dataclasses import replace
from fractions import Fraction

from node import answering, engine
from node.config import CoordinatorGrant, NodeConfig
from node.dataset import Dataset
from node.exports import export_ledger, node_signing_key
from node.ledger import PrivacyLedger, StoredAnswer
from node.store import load_dataset, store_path
from tiaki import __version__, receipts
from tiaki.answer import Answer
from tiaki.budget import BudgetStatus, format_amount
from tiaki.convert import (
    answer_from_proto,
    answer_to_proto,
    budget_to_proto,
    cost_to_proto,
    definition_to_proto,
    kind_to_proto,
    query_from_proto,
)
from tiaki.errors import InvalidQueryError, NotReadyError, PolicyViolationError
from tiaki.query import PrivacyCost, QueryKind
from tiaki.signing import SigningKey
from tiaki.v1 import node_pb2 as pb

log = logging.getLogger("tiaki.node")

# Requests above this are refused before decoding their contents; real
# queries are a few hundred bytes.
MAX_REQUEST_BYTES = 64 * 1024


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

    # ------------------------------------------------------------ info

    def info(self) -> pb.NodeInfo:
        schema, policy = self.config.schema, self.config.policy
        columns = []
        for name, spec in schema.columns.items():
            if not schema.is_queryable(name):
                continue
            col = pb.ColumnInfo(name=name, type=spec.type)
            categories = getattr(spec, "categories", None)
            if categories is not None:
                col.categories.extend(categories)
            bounds = schema.numeric_bounds(name)
            if bounds is not None:
                col.bounds.CopyFrom(pb.Bounds(lower=bounds[0], upper=bounds[1]))
            if spec.type == "date":
                col.date_min = str(getattr(spec, "min", None) or "")
                col.date_max = str(getattr(spec, "max", None) or "")
            if spec.type == "derived":
                col.expression = getattr(spec, "expression", "")
            columns.append(col)
        try:
            version = self.datasets.current.version
        except NotReadyError:
            version = ""
        return pb.NodeInfo(
            node_id=self.config.node_id,
            version=__version__,
            definition=definition_to_proto(policy.privacy_definition),
            identifier_column=schema.identifier,
            columns=columns,
            allowed_kinds=[kind_to_proto(k) for k in policy.allowed_kinds],
            max_records_per_client=policy.max_records_per_client,
            per_query_max=format_amount(policy.per_query_max),
            budget_period=policy.budget.period,
            max_group_by=3,
            max_cells=policy.max_cells,
            dataset_version=version,
            signing_key=self.signing_key.public_text,
            ledger_id=self.ledger.ledger_id,
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

    def plan(self, identity: str, request: pb.QueryRequest) -> pb.QueryPlan:
        """Cost and noise of a query from schema and policy alone; spends nothing.

        With a query id, also whether ``identity`` already holds an answer to
        this query under it (a replay, free); only that identity's own ids are
        looked at, as for :meth:`query`.
        """
        if request.ByteSize() > MAX_REQUEST_BYTES:
            raise InvalidQueryError(f"request is larger than {MAX_REQUEST_BYTES} bytes")
        config = self.config  # one policy for the whole plan, even across a reload
        query_id, _, query = query_from_proto(request, require_id=False)
        plan = engine.plan(query, config.schema, config.policy)
        definition = config.policy.privacy_definition
        noise = answering.plan_noise(plan, definition)
        message = pb.QueryPlan(
            node_id=config.node_id,
            canonical_query=query.canonical(),
            group_by=list(query.group_by),
            cells=plan.n_cells,
            components=[
                pb.PlannedComponent(
                    name=n.name,
                    distribution=n.distribution,
                    scale=n.scale,
                    accuracy_95=n.accuracy_95,
                )
                for n in noise
            ],
            charge=cost_to_proto(
                PrivacyCost(definition, sum((n.charge for n in noise), Fraction(0)))
            ),
            budget=budget_to_proto(self.ledger.status()),
            replay=bool(query_id)
            and self.ledger.stored_answer(identity, query_id, query.canonical()) is not None,
        )
        bounds, midpoint = _clamping(plan)
        if bounds is not None and midpoint is not None:
            message.bounds.CopyFrom(pb.Bounds(lower=bounds[0], upper=bounds[1]))
            message.midpoint = midpoint
        return message

    def query(
        self, identity: str, request: pb.QueryRequest, grant: CoordinatorGrant | None = None
    ) -> Answer:
        """Answer one query for ``identity``, charging the ledger before returning.

        Charges exactly the requested cost (OpenDP's privacy map at the noise
        scales used is at most that, and is recorded beside it). ``grant`` is
        the policy's entry for the caller: it may narrow the query kinds and
        cap what this identity spends per period.
        """
        if request.ByteSize() > MAX_REQUEST_BYTES:
            raise InvalidQueryError(f"request is larger than {MAX_REQUEST_BYTES} bytes")
        config = self.config  # one policy for the whole query, even across a reload
        query_id, analyst, query = query_from_proto(request)
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
        bounds, midpoint = _clamping(plan)
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
            bounds=bounds,
            midpoint=midpoint,
        )
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
            response=answer_to_proto(fresh).SerializeToString(deterministic=True),
            commitment_salt=salt,
            identity_cap=cap,
        )
        if replayed:
            return self._replay(stored_answer)
        return replace(fresh, budget=self.ledger.status(), commitment_salt=salt)

    def _replay(self, stored: StoredAnswer) -> Answer:
        answer = answer_from_proto(pb.QueryResponse.FromString(stored.response))
        return replace(
            answer,
            budget=self.ledger.status(),
            replayed=True,
            commitment_salt=stored.commitment_salt,
        )


def _clamping(plan: engine.QueryPlan) -> tuple[tuple[float, float] | None, float | None]:
    """SUM and MEAN: the clamping bounds in force and their midpoint (a mean's shift)."""
    spec = plan.numeric
    if spec is None or plan.query.kind not in (QueryKind.SUM, QueryKind.MEAN):
        return None, None
    return (spec.lower, spec.upper), (spec.lower_int + spec.upper_int) / (2.0 * spec.factor)


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
