"""The NGO side of tiaki: a node that answers only DP aggregates over its own records."""
