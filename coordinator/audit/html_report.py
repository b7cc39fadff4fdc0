"""The audit report as one self-contained HTML page, readable offline.

Everything is inline: the style sheet, and the spending chart as a base64 PNG
(or a note when matplotlib is not installed). A Content-Security-Policy in the
page forbids scripts and any outside resource. Every string that comes from an
export (names, identities, analysts, query ids, kinds, findings that quote
them) is untrusted and passes through :func:`html.escape`.

The page is for people: it fits a 1280-pixel window (long ids, hashes and
identities wrap rather than widen a table), amounts are rounded exactly with
:func:`tiaki.budget.display_amount` and times shown to the second, each with
its exact text in the element's ``title`` (shown on hover). The JSON report
keeps every value exact.

Named so as not to shadow the standard library's ``html`` module.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from fractions import Fraction

from coordinator.audit.findings import Finding
from coordinator.audit.ledgers import parse_time
from coordinator.audit.report import AuditReport, CoordinatorReport, NodeReport, Share
from tiaki.budget import display_amount, format_amount
from tiaki.plain_words import describe_query

# The page must fit a 1280-pixel window: the body is at most 76rem (1216 px)
# wide, padding included, and nothing inside may be wider. Tables keep their
# natural width when it fits. Cells holding names ("wrap": identities,
# analysts) or ids and file names ("code") may break anywhere, which is what
# lets a table shrink to the page (a long unbroken id would otherwise set its
# minimum width); a minimum width keeps such a column from becoming a sliver.
_STYLE = """
*, *::before, *::after { box-sizing: border-box; }
html { background: #fff; }
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 76rem;
       padding: 0 1.5rem; color: #222; line-height: 1.35; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { margin-top: 1.6em; }
.verdict { font-size: 1.2em; font-weight: bold; padding: 0.6em 1em; border-radius: 4px; }
.passed { background: #e3f4e1; border: 1px solid #6a6; }
.failed { background: #fbe3e3; border: 1px solid #c55; }
table { border-collapse: collapse; margin: 0.8em 0; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left;
         vertical-align: baseline; overflow-wrap: break-word; }
th { background: #f3f3f3; }
.wrap, .code { overflow-wrap: anywhere; }
.code { font-family: ui-monospace, monospace; font-size: 0.92em; }
td.wrap, td.code { min-width: 7em; }
td.amount { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.rounded { text-decoration: underline dotted #999; }
td.time, td.period { white-space: nowrap; }
tr.error td:first-child { color: #a00; font-weight: bold; }
tr.warning td:first-child { color: #a60; }
.note { color: #555; font-style: italic; }
code { white-space: nowrap; }
img { max-width: 100%; height: auto; }
"""

MAX_UNBROKEN = 16  # characters a cell may keep on one line
_NO_NODES = '<p class="note">no node exports</p>'
_NO_COORDINATORS = '<p class="note">no coordinator exports</p>'
_ROUNDING = (
    '<p class="note">Amounts are rounded to six significant digits (those underlined '
    "with dots had more); point at one to see its exact value, which the JSON report "
    "(<code>--format json</code>) also gives.</p>"
)
_DEFINITIONS = {"pure": "pure differential privacy", "zcdp": "zero-concentrated DP (zCDP)"}
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _amount(value: Fraction | None, field: str = "") -> str:
    """An amount rounded for reading, its exact value in ``title`` (shown on hover)."""
    attr = f' data-field="{_e(field)}"' if field else ""
    if value is None:
        return f'<td class="amount"{attr}>-</td>'
    exact, shown = format_amount(value), display_amount(value)
    # Marked, so a reader knows there is more to see than the digits shown.
    css = "amount" if shown == exact else "amount rounded"
    return f'<td class="{css}"{attr} title="{_e(exact)}">{_e(shown)}</td>'


def _name(value: object) -> str:
    """A cell for a name (identity, analyst, node, kind): may wrap anywhere (see _STYLE)."""
    return f'<td class="wrap">{_e(value)}</td>'


def _code(value: object) -> str:
    """A cell for a ledger or query id: monospaced, and may wrap anywhere."""
    return f'<td class="code">{_e(value)}</td>'


def _file(path: str) -> str:
    """An export's file name, monospaced, preferring to wrap after a slash."""
    return '<td class="code">' + "/<wbr>".join(_e(part) for part in path.split("/")) + "</td>"


def _time(text: str) -> str:
    """An entry time to the second, in UTC; the exact text as the ledger wrote it in
    ``title``. Text that is not a time (an untrusted export's) is shown as it is."""
    when = parse_time(text)
    if when is None:
        return _code(text)
    shown = when.strftime("%Y-%m-%d %H:%M:%S")
    return f'<td class="time" title="{_e(text)}">{_e(shown)}</td>'


def _period(label: str) -> str:
    # "2026-Q1" would otherwise break at its hyphen; labels are short, unless forged.
    css = "period" if len(label) <= MAX_UNBROKEN else "wrap"
    return f'<td class="{css}">{_e(label)}</td>'


def _definition(node: NodeReport) -> str:
    return _td(f"{node.definition} ({node.unit})" if node.unit else node.definition)


def _table(headers: Sequence[str], rows: Iterable[str], css: str = "", empty: str = "none") -> str:
    """A table; ``rows`` are ready-made ``<tr>`` elements (their text already escaped)."""
    body = list(rows)
    if not body:
        return f'<p class="note">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    cls = f' class="{_e(css)}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _row(*cells: str) -> str:
    return "<tr>" + "".join(cells) + "</tr>"


def _td(value: object) -> str:
    return f"<td>{_e(value)}</td>"


def _findings(findings: Sequence[Finding]) -> str:
    rows = (
        f'<tr class="{_e(f.severity.value)}">{_td(f.severity.value)}{_file(f.export or "-")}'
        f"{_td('-' if f.seq is None else f.seq)}{_td(f.message)}</tr>"
        for f in findings
    )
    return _table(["severity", "export", "entry", "finding"], rows, "findings", "no findings")


def _shares(title: str, shares: Sequence[Share], css: str) -> str:
    rows = (_row(_name(s.name), _td(s.queries), _amount(s.spent)) for s in shares)
    return _table([title, "queries", "spent"], rows, css)


def _node(node: NodeReport, number: int) -> str:
    summary = _table(
        [
            "export",
            "ledger id",
            "definition",
            "entries",
            "queries",
            "spent",
            "lifetime limit",
            "lifetime remaining",
        ],
        [
            _row(
                _file(node.export),
                _code(node.ledger_id),
                _definition(node),
                _td(f"{node.from_seq}-{node.to_seq}"),
                f'<td data-field="queries">{node.queries}</td>',
                _amount(node.spent, "spent"),
                _amount(node.lifetime_limit),
                _amount(node.lifetime_remaining),
            )
        ],
        "summary",
    )
    periods = _table(
        ["period", "queries", "spent", "limit", "remaining"],
        (
            _row(
                _period(p.period),
                _td(p.queries),
                _amount(p.spent, "period-spent"),
                _amount(p.limit),
                _amount(p.remaining),
            )
            for p in node.periods
        ),
        "periods",
    )
    identities = _table(
        ["identity", "period", "queries", "spent", "cap", "remaining"],
        (
            _row(
                _name(i.identity),
                _period(i.period),
                _td(i.queries),
                _amount(i.spent),
                _amount(i.cap),
                _amount(i.remaining),
            )
            for i in node.identities
        ),
        "identities",
    )
    queries = _table(
        [
            "entry",
            "time (UTC)",
            "query id",
            "identity",
            "analyst",
            "what was asked",
            "period",
            "cost",
            "worst case",
        ],
        (
            _row(
                _td(c.seq),
                _time(c.at),
                _code(c.record.query_id),
                _name(c.record.identity),
                _name(c.record.analyst),
                _td(describe_query(c.record.canonical_query)),
                _period(c.record.period),
                _amount(c.record.charge, "charge"),
                _amount(c.record.worst_case, "worst-case"),
            )
            for c in node.charges
        ),
        "queries",
        "no queries were charged",
    )
    secure = ""
    if node.secure is not None:
        s = node.secure
        secure = "<h4>secure sums: aggregate beside worst case</h4>" + _table(
            [
                "secure sums",
                "charged (aggregate)",
                "aggregate guarantee",
                "worst case",
                "worst-case cap",
                "worst case left",
            ],
            [
                _row(
                    f'<td data-field="secure-sums">{s.sessions}</td>',
                    _amount(s.aggregate, "secure-charged"),
                    _amount(s.guarantee),
                    _amount(s.worst_case, "worst-case-total"),
                    _amount(s.worst_case_lifetime),
                    _amount(s.worst_case_remaining),
                )
            ],
            "secure",
        )
    unit = (
        f'<p class="unit">Amounts are {_e(node.unit)}: the node accounts with '
        f"{_e(_DEFINITIONS[node.definition])}.</p>"
        if node.definition in _DEFINITIONS
        else ""
    )
    return (
        f'<section class="node" id="node-{number}" data-subject="{_e(node.subject)}">'
        f"<h3>node {_e(node.subject)}</h3>{unit}{summary}{secure}"
        f"<h4>per period</h4>{periods}<h4>per identity</h4>{identities}"
        f"<h4>per query kind</h4>{_shares('kind', node.kinds, 'kinds')}"
        f"<h4>per analyst</h4>{_shares('analyst', node.analysts, 'analysts')}"
        f"<h4>queries</h4>{queries}</section>"
    )


def _coordinator(c: CoordinatorReport, number: int) -> str:
    outcomes = _table(
        ["final outcome", "count"],
        (_row(_td(status), _td(count)) for status, count in c.outcomes),
        "outcomes",
    )
    nodes = _table(
        ["node", "node id", "asked", "answered", "charges reported"],
        (
            _row(
                _name(n.node),
                _name(n.node_id or "-"),
                _td(n.asked),
                _td(n.answered),
                _amount(n.charged),
            )
            for n in c.nodes
        ),
        "coordinator-nodes",
    )
    analysts = _table(
        ["analyst", "questions"],
        (_row(_name(s.name), _td(s.queries)) for s in c.analysts),
        "analysts",
    )
    return (
        f'<section class="coordinator" id="coordinator-{number}" '
        f'data-subject="{_e(c.subject)}"><h3>coordinator {_e(c.subject)}</h3>'
        f'<p><span class="code">{_e(c.export)}</span>: ledger '
        f'<span class="code">{_e(c.ledger_id)}</span>, '
        f'<span data-field="questions">{c.questions}</span> questions asked.</p>'
        f"{outcomes}{nodes}{analysts}</section>"
    )


def report_html(report: AuditReport, plot_png: bytes | None, plot_note: str = "") -> str:
    """The whole page. ``plot_png`` is embedded if given, else ``plot_note`` says why not."""
    v = report.verification
    css = "passed" if v.passed else "failed"
    keys = (
        "Signatures were checked against the trusted keys given."
        if v.keys_pinned
        else "Signatures were checked only against the keys the exports carry (no trusted "
        "keys were given)."
    )
    if plot_png is not None:
        data = base64.b64encode(plot_png).decode("ascii")
        chart = f'<img alt="cumulative privacy spent per node" src="data:image/png;base64,{data}">'
    else:
        chart = f'<p class="note">{_e(plot_note or "no chart")}</p>'
    exports = _table(
        ["export", "source", "subject", "entries", "exported at (UTC)"],
        (
            _row(
                _file(e.name),
                _td(e.source),
                _name(e.subject),
                _td(f"{e.from_seq}-{e.to_seq}"),
                _time(e.exported_at),
            )
            for e in v.exports
        ),
        "exports",
    )
    nodes = "".join(_node(n, i) for i, n in enumerate(report.nodes, start=1))
    coordinators = "".join(_coordinator(c, i) for i, c in enumerate(report.coordinators, 1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>tiaki audit report</title><style>{_STYLE}</style></head><body>"
        "<h1>tiaki audit report</h1>"
        f'<p class="verdict {css}" id="verdict">{_e(v.verdict())}</p>'
        f'<p class="note">{_e(keys)}</p>'
        f"<h2>Findings</h2>{_findings(v.findings)}"
        f"<h2>Exports</h2>{exports}"
        f"<h2>Spending over time</h2>{chart}"
        f"<h2>Nodes</h2>{_ROUNDING if nodes else _NO_NODES}{nodes}"
        f"<h2>Coordinators</h2>{coordinators or _NO_COORDINATORS}"
        "</body></html>\n"
    )
