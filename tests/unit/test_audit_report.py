"""``tiaki audit report``: totals that equal the ledgers, in JSON, tables and a safe HTML page.

Totals are checked against sums computed here from the builders' own chain
entries, not against the report's other numbers. The HTML page is read back
with :mod:`html.parser` (what a browser would see), and strings planted in an
export must come out as text, never as markup. Amounts the page shows rounded
carry their exact value in ``title``. The spending chart is checked on the
matplotlib figure itself: one panel per node, its limits, its unit. (How the
page looks in a browser: tests/integration/test_audit_report_browser.py.)
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import datetime
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from coordinator.audit.inputs import load_exports
from coordinator.audit.report import NodeReport, build_report
from coordinator.audit.verify import verify_exports
from tests.unit.audit_ledgers import (
    NGO_A_SPENT,
    NGO_B_SPENT,
    Federation,
    LedgerBuilder,
    at,
    charge,
    edit_lines,
    federation,
    policy,
    run_audit,
)
from tiaki.budget import display_amount, format_amount

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('owned')</script>"
EVIL_ATTRIBUTE = '"><img src=x onerror=alert(1)>'


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return federation(tmp_path / "keys")


@pytest.fixture
def exports(fed: Federation, tmp_path: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "exports"
    folder.mkdir()
    return fed.export_all(folder)


def _charges(builder: LedgerBuilder) -> list[dict[str, Any]]:
    return [dict(e.body) for e in builder.entries if e.type == "charge"]


def _total(charges: list[dict[str, Any]], **where: str) -> Fraction:
    return sum(
        (
            Fraction(c["charge"])
            for c in charges
            if all(c[key] == value for key, value in where.items())
        ),
        Fraction(0),
    )


def test_json_totals_equal_the_sums_of_the_charges(
    capsys: Any, fed: Federation, exports: tuple[Path, ...]
) -> None:
    run = run_audit(capsys, "report", *exports, "--format", "json")
    assert run.code == 0, run.err
    doc = run.doc()
    assert doc["format"] == "tiaki-audit-report"
    assert doc["verification"]["verdict"] == "passed"
    nodes = {n["subject"]: n for n in doc["nodes"]}
    for subject, builder, by_period in (
        ("ngo-a", fed.ngo_a, NGO_A_SPENT),
        ("ngo-b-id", fed.ngo_b, NGO_B_SPENT),
    ):
        charges = _charges(builder)
        node = nodes[subject]
        assert node["queries"] == len(charges)
        assert node["spent"] == format_amount(_total(charges))
        assert {p["period"]: p["spent"] for p in node["periods"]} == {
            label: format_amount(_total(charges, period=label)) for label in by_period
        }
        assert {p["period"]: Fraction(p["spent"]) for p in node["periods"]} == by_period
        for group, key in (("kinds", "kind"), ("analysts", "analyst")):
            assert {row[key]: row["spent"] for row in node[group]} == {
                name: format_amount(_total(charges, **{key: name}))
                for name in {c[key] for c in charges}
            }
        assert {(i["identity"], i["period"]): i["spent"] for i in node["identities"]} == {
            (c["identity"], c["period"]): format_amount(
                _total(charges, identity=c["identity"], period=c["period"])
            )
            for c in charges
        }
        assert [c["charge"] for c in node["charges"]] == [c["charge"] for c in charges]
    a = nodes["ngo-a"]
    assert a["lifetime_limit"] == "5" and a["lifetime_remaining"] == "3.125"
    q1 = next(p for p in a["periods"] if p["period"] == "2026-Q1")
    assert (q1["limit"], q1["remaining"]) == ("2", "0.75")
    ministry_q1 = next(
        i for i in a["identities"] if (i["identity"], i["period"]) == ("ministry", "2026-Q1")
    )
    assert (ministry_q1["cap"], ministry_q1["remaining"]) == ("1.5", "0.5")

    [coordinator] = doc["coordinators"]
    assert coordinator["questions"] == 3
    assert coordinator["outcomes"] == {"answered": 4, "refused": 1, "replayed": 1}
    reported = {n["node"]: n["charged"] for n in coordinator["nodes"]}
    # What the coordinator recorded equals what each node charged the ministry.
    assert reported == {
        "ngo-a": format_amount(_total(_charges(fed.ngo_a), identity="ministry")),
        "ngo-b": format_amount(_total(_charges(fed.ngo_b), identity="ministry")),
    }


def test_the_table_report_starts_with_the_verdict(capsys: Any, exports: tuple[Path, ...]) -> None:
    run = run_audit(capsys, "report", *exports)
    assert run.code == 0
    assert run.out.startswith("audit passed")
    assert "2026-Q2" in run.out and "remaining" in run.out
    assert "coordinator ministry" in run.out


class _Page(HTMLParser):
    """What a browser would make of the page: tags, and the numbers marked for reading."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.verdict = ""
        self.node: str | None = None
        self.fields: dict[tuple[str, str], list[str]] = {}
        self.titles: dict[tuple[str, str], list[str]] = {}  # title="" of the same elements
        self.classes: dict[tuple[str, str], list[str]] = {}
        self._field: str | None = None
        self._in_verdict = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "img":
            self.images.append(found.get("src") or "")
        if tag == "section" and found.get("class") == "node":
            self.node = found.get("data-subject")
        self._field = found.get("data-field")
        self._in_verdict = found.get("id") == "verdict"
        if self._field and self.node is not None:
            key = (self.node, self._field)
            self.titles.setdefault(key, []).append(found.get("title") or "")
            self.classes.setdefault(key, []).append(found.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.node = None
        self._field = None
        self._in_verdict = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_verdict:
            self.verdict += data
        if self._field and self.node is not None:
            self.fields.setdefault((self.node, self._field), []).append(data)


def _page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def test_html_totals_equal_the_ledgers(
    capsys: Any, fed: Federation, exports: tuple[Path, ...], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    run = run_audit(capsys, "report", *exports, "--format", "html", "--out", out)
    assert run.code == 0, run.err
    assert f"wrote {out}" in run.err
    text = out.read_text(encoding="utf-8")
    page = _page(text)
    assert page.verdict.startswith("audit passed")
    assert text.index('id="verdict"') < text.index('class="node"')  # the verdict is on top
    assert "script" not in page.tags and "link" not in page.tags
    for subject, builder in (("ngo-a", fed.ngo_a), ("ngo-b-id", fed.ngo_b)):
        charges = _charges(builder)
        assert page.fields[(subject, "spent")] == [format_amount(_total(charges))]
        assert page.fields[(subject, "queries")] == [str(len(charges))]
        listed = page.fields[(subject, "charge")]
        assert sorted(listed) == sorted(c["charge"] for c in charges)
        per_period = sum((Fraction(x) for x in page.fields[(subject, "period-spent")]), Fraction(0))
        assert per_period == _total(charges)


def test_html_embeds_the_chart_when_matplotlib_is_there(
    capsys: Any, exports: tuple[Path, ...]
) -> None:
    pytest.importorskip("matplotlib")
    run = run_audit(capsys, "report", *exports, "--format", "html")
    assert run.code == 0
    [image] = _page(run.out).images
    assert image.startswith("data:image/png;base64,")


def test_strings_from_an_export_are_escaped_in_html(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    fed.ngo_a.add(
        charge("q9", "0.125", "2026-Q2", identity="university", analyst=EVIL),
        at("2026-04-02", "11:00"),
    )
    fed.ngo_a.add(
        charge(EVIL_ATTRIBUTE, "0.125", "2026-Q2", identity="university", analyst="x"),
        at("2026-04-02", "11:01"),
    )
    path = fed.ngo_a.export(tmp_path / "ngo-a.jsonl")
    run = run_audit(capsys, "report", path, "--format", "html")
    assert run.code == 0, run.err
    page = _page(run.out)
    assert "script" not in page.tags
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "<script>" not in run.out and "onerror=alert(1)>" not in run.out
    assert "&lt;script&gt;" in run.out
    # A browser shows the strings as they were, as text.
    assert EVIL in page.text and EVIL_ATTRIBUTE in page.text


def test_the_table_report_shows_control_characters_as_escapes(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    fed.ngo_a.add(
        charge("q9", "0.125", "2026-Q2", identity="university", analyst="x\x1b[2Jy"),
        at("2026-04-02", "11:00"),
    )
    run = run_audit(capsys, "report", fed.ngo_a.export(tmp_path / "a.jsonl"))
    assert "\x1b" not in run.out
    assert "x\\x1b[2Jy" in run.out


def test_plot_writes_a_png(capsys: Any, exports: tuple[Path, ...], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "spend.png"
    run = run_audit(capsys, "report", *exports, "--plot", plot)
    assert run.code == 0, run.err
    assert plot.read_bytes().startswith(PNG_MAGIC)


def test_without_matplotlib_plot_is_a_clear_error_and_html_says_so(
    capsys: Any, exports: tuple[Path, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    run = run_audit(capsys, "report", *exports, "--plot", tmp_path / "spend.png")
    assert run.code == 2
    assert "pip install 'tiaki[plot]'" in run.error_line()
    assert not (tmp_path / "spend.png").exists()

    page = run_audit(capsys, "report", *exports, "--format", "html")
    assert page.code == 0
    assert _page(page.out).images == []
    assert "No chart: plotting needs the" in page.out


def test_a_report_on_a_failing_audit_is_written_and_exits_5(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    path = fed.ngo_a.export(tmp_path / "a.jsonl")

    def inflate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in records:
            if r["record"] == "entry" and r["type"] == "charge":
                r["body"]["charge"] = "0.001"
        return records

    edit_lines(path, inflate)
    out = tmp_path / "report.json"
    run = run_audit(capsys, "report", path, "--format", "json", "--out", out)
    assert run.code == 5
    assert "AUDIT FAILED" in run.err
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["verification"]["verdict"] == "failed"


def test_plot_must_be_png(capsys: Any, exports: tuple[Path, ...], tmp_path: Path) -> None:
    run = run_audit(capsys, "report", *exports, "--plot", tmp_path / "spend.svg")
    assert run.code == 2
    assert "PNG" in run.error_line()


def test_html_rounds_amounts_for_reading_and_keeps_them_exact_in_title(
    capsys: Any, fed: Federation, tmp_path: Path
) -> None:
    long = "0.1234567891"  # more digits than anyone reads
    fed.ngo_a.add(
        charge("q9", long, "2026-Q2", identity="university"), at("2026-04-02", "11:00:00")
    )
    path = fed.ngo_a.export(tmp_path / "ngo-a.jsonl")
    total = _total(_charges(fed.ngo_a))
    run = run_audit(capsys, "report", path, "--format", "html")
    assert run.code == 0, run.err
    page = _page(run.out)
    assert page.fields[("ngo-a", "spent")] == [display_amount(total)] == ["1.99846"]
    assert page.titles[("ngo-a", "spent")] == [format_amount(total)] == ["1.9984567891"]
    assert page.classes[("ngo-a", "spent")] == ["amount rounded"]
    charges = dict(
        zip(page.titles[("ngo-a", "charge")], page.fields[("ngo-a", "charge")], strict=True)
    )
    assert charges[long] == "0.123457"
    assert charges["0.5"] == "0.5"  # nothing to round: shown as it is, and not marked
    # Times to the second, as the ledger wrote them in title.
    assert "2026-04-02 11:00:00" in page.text
    assert f'title="{at("2026-04-02", "11:00:00")}"' in run.out
    assert "pure (ε)" in page.text
    # The JSON report stays exact.
    doc = run_audit(capsys, "report", path, "--format", "json").doc()
    assert doc["nodes"][0]["spent"] == "1.9984567891"
    assert doc["nodes"][0]["charges"][-1]["charge"] == long


# ---------------------------------------------------------------- the chart


def _nodes(*paths: Path) -> tuple[NodeReport, ...]:
    return build_report(verify_exports(load_exports(list(paths)))).nodes


def _legend(axes: Axes) -> list[str]:
    legend = axes.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _line(axes: Axes, label: str) -> tuple[list[datetime], list[float]]:
    [line] = [ln for ln in axes.get_lines() if ln.get_label() == label]
    xs = np.asarray(line.get_xdata()).astype("datetime64[us]").astype(datetime).tolist()
    return xs, [float(y) for y in np.asarray(line.get_ydata())]


def _when(day: str, clock: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}")


def test_the_chart_has_a_panel_per_node_with_its_limits_and_unit(
    fed: Federation, exports: tuple[Path, Path, Path]
) -> None:
    pytest.importorskip("matplotlib")
    from coordinator.audit.plot import spend_figure

    figure = spend_figure(_nodes(*exports))
    a, b = figure.axes  # one panel per node, in the order of the report
    assert a.get_title(loc="left").startswith("ngo-a: 1.875 ε spent, 5 queries")
    assert b.get_title(loc="left").startswith("ngo-b-id: 1.25 ε spent, 2 queries")
    assert a.get_ylabel() == b.get_ylabel() == "ε spent"  # pure DP: amounts are ε
    assert b.get_xlabel() == "time (UTC)"
    assert a.get_shared_x_axes().joined(a, b)  # one time axis for every panel
    # ngo-a counts quarterly: its total, and its spending in each period, which
    # the quarterly limit applies to and which starts again at the roll-over.
    assert _legend(a) == [
        "spent in total",
        "spent in the period",
        "quarterly limit 2 ε",
        "lifetime limit 5 ε",
    ]
    _, total = _line(a, "spent in total")
    assert total[-1] == float(_total(_charges(fed.ngo_a))) == 1.875
    times, period = _line(a, "spent in the period")
    reset = times.index(_when("2026-04-01", "00:00:00"))  # the Q2 period entry
    assert period[reset - 1] == float(NGO_A_SPENT["2026-Q1"]) and period[reset] == 0.0
    assert period[-1] == float(NGO_A_SPENT["2026-Q2"])
    assert set(_line(a, "quarterly limit 2 ε")[1]) == {2.0}
    assert set(_line(a, "lifetime limit 5 ε")[1]) == {5.0}
    # ngo-b has one period for its lifetime: one line, and its limit.
    assert _legend(b) == ["spent", "limit 3 ε"]
    assert _line(b, "spent")[1][-1] == float(NGO_B_SPENT["lifetime"])


def test_every_node_is_drawn_even_when_they_spend_alike(tmp_path: Path) -> None:
    """Nodes asked the same questions spend the same at the same moments: on one
    chart their lines would lie on top of each other."""
    pytest.importorskip("matplotlib")
    from coordinator.audit.plot import spend_figure

    fed = federation(tmp_path / "keys")
    [a] = _nodes(fed.ngo_a.export(tmp_path / "a.jsonl"))
    twins = tuple(replace(a, subject=name) for name in ("ngo-a", "ngo-b", "ngo-c"))
    figure = spend_figure(twins)
    assert [ax.get_title(loc="left").split(":")[0] for ax in figure.axes] == [
        "ngo-a",
        "ngo-b",
        "ngo-c",
    ]
    colours = {_line_colour(ax, "spent in total") for ax in figure.axes}
    assert len(colours) == 3  # and each its own colour


def _line_colour(axes: Axes, label: str) -> str:
    [line] = [ln for ln in axes.get_lines() if ln.get_label() == label]
    return str(line.get_color())


def test_a_zcdp_node_is_plotted_in_rho(fed: Federation, exports: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("matplotlib")
    from coordinator.audit.plot import spend_figure

    b = next(n for n in _nodes(*exports) if n.subject == "ngo-b-id")
    [axes] = spend_figure((replace(b, definition="zcdp"),)).axes
    assert axes.get_ylabel() == "ρ spent"
    assert _legend(axes) == ["spent", "limit 3 ρ"]
    [unknown] = spend_figure((replace(b, definition="renyi"),)).axes
    assert unknown.get_ylabel() == "spent"  # no unit rather than a wrong one


def test_a_changed_limit_is_drawn_as_a_step(fed: Federation, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from coordinator.audit.plot import spend_figure

    raised = at("2026-04-02", "09:30:00")  # between q4 and q5
    fed.ngo_a.add(policy("ngo-a", limit="3"), raised)
    nodes = _nodes(fed.ngo_a.export(tmp_path / "a.jsonl"))
    [axes] = spend_figure(nodes).axes
    assert "quarterly limit 2 → 3 ε" in _legend(axes)
    times, limits = _line(axes, "quarterly limit 2 → 3 ε")
    assert limits[0] == 2.0 and limits[-1] == 3.0
    assert limits[times.index(_when("2026-04-02", "09:30:00"))] == 3.0


def test_a_node_without_charges_gets_an_empty_panel(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from coordinator.audit.plot import spend_png

    fed = federation(tmp_path / "keys")
    entries = [e for e in fed.ngo_b.entries if e.type != "charge"]
    entries = entries[:4]  # opened, key, policy, period: before any charge
    path = fed.ngo_b.export(tmp_path / "b.jsonl", entries=entries)
    assert spend_png(_nodes(path)).startswith(PNG_MAGIC)
    assert spend_png(()).startswith(PNG_MAGIC)
