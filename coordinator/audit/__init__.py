"""``tiaki audit``: check signed ledger exports, reconcile them, and report what was spent.

An evaluator is given JSON Lines exports (see :mod:`tiaki.ledger_export`) from
nodes and from a coordinator, and trusts none of them. The package:

- :mod:`~coordinator.audit.inputs` reads the export files and a file of
  trusted public keys, refusing unusable input with a clear message;
- :mod:`~coordinator.audit.ledgers` parses each export's entries into typed
  records, remembering where each came from;
- :mod:`~coordinator.audit.node_rules` replays a node's ledger against its own
  policy (limits, caps, periods);
- :mod:`~coordinator.audit.continuity` compares exports with earlier exports
  of the same ledger (truncation, forks, replays, replaced histories);
- :mod:`~coordinator.audit.reconcile` matches the coordinator's mirror against
  each node's ledger, charge by charge;
- :mod:`~coordinator.audit.verify` runs all of the above and gives a verdict;
- :mod:`~coordinator.audit.report` and :mod:`~coordinator.audit.html` total
  what was spent, for people (tables, HTML) and programs (JSON).

Every problem is a :class:`~coordinator.audit.findings.Finding` naming the
export and the entry it concerns.
"""
