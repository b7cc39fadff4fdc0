"""``tiaki audit``: (being built)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Register the ``audit`` command (not yet available)."""
