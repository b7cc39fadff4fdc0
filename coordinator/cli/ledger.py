"""``tiaki ledger``: (being built)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Register the ``ledger`` command (not yet available)."""
