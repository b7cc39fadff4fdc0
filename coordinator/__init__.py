"""The ministry side of tiaki: asks nodes, combines answers, keeps its own ledger."""
