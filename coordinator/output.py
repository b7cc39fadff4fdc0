"""Answers rendered for people (tables) and programs (JSON)."""

from __future__ import annotations

import json
import math

from tabulate import tabulate

from tiaki.answer import Answer
from tiaki.budget import display_amount, format_amount


def _round(value: float, digits: int = 4) -> float | int:
    if not math.isfinite(value) or value == 0:
        return value
    if value.is_integer() and abs(value) < 1e15:
        return int(value)
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def answer_table(answer: Answer) -> str:
    has_bins = any(cell.bin for cell in answer.cells)
    headers = [*answer.group_by, *(["bin"] if has_bins else []), "estimate", "± 95%"]
    rows = [
        [
            *cell.group,
            *([cell.bin] if has_bins else []),
            _round(cell.value),
            _round(cell.accuracy_95),
        ]
        for cell in answer.cells
    ]
    lines = [tabulate(rows, headers=headers, disable_numparse=True)]
    lines.append("")
    lines.append(
        f"node {answer.node_id}: charged {answer.charged.definition.symbol} "
        f"{display_amount(answer.charged.amount)}"
        + (
            " (stored answer to a repeated query id; nothing charged now)"
            if answer.replayed
            else ""
        )
    )
    if answer.budget is not None:
        lines.append(
            f"remaining in {answer.budget.current.label}: {display_amount(answer.budget.available)}"
        )
    lines.append(f"query id {answer.query_id}, dataset version {answer.dataset_version}")
    return "\n".join(lines)


def answer_json(answer: Answer) -> str:
    doc = {
        "query_id": answer.query_id,
        "node_id": answer.node_id,
        "query": json.loads(answer.canonical_query),
        "group_by": list(answer.group_by),
        "cells": [
            {
                "group": dict(zip(answer.group_by, cell.group, strict=True)),
                **({"bin": cell.bin} if cell.bin else {}),
                "estimate": cell.value,
                "accuracy_95": cell.accuracy_95,
                "components": [
                    {
                        "name": c.name,
                        "value": c.value,
                        "distribution": c.distribution,
                        "scale": c.scale,
                        "accuracy_95": c.accuracy_95,
                    }
                    for c in cell.components
                ],
            }
            for cell in answer.cells
        ],
        "charged": {answer.charged.definition.symbol: format_amount(answer.charged.amount)},
        "replayed": answer.replayed,
        "dataset_version": answer.dataset_version,
        "remaining": format_amount(answer.budget.available) if answer.budget else None,
    }
    return json.dumps(doc, indent=2)
