"""The HTML audit report as a browser draws it: headless Chromium screenshots.

The report is built for three nodes whose ledgers look like real ones: query
ids that are UUIDs, a long certificate identity and analyst address, a policy
whose limit was raised, and an older entry that charged OpenDP's float map
(57 decimal places). Chromium renders the page and the screenshots are read
back with Pillow:

- the page fits a 1280-pixel window: rendered with the margins around the body
  painted magenta, no row of the screenshot has anything drawn in the right
  margin, so no table runs past the body, and the body ends inside the window;
  at 1600 pixels the page stays within the middle 1280;
- the spending chart shows all three nodes: each node's line colour is there.

Chromium is not a Python package: the test is skipped where it is not
installed (on Debian, ``apt-get install chromium``). To look at the page, set
``TIAKI_SCREENSHOT_DIR`` to a folder: the screenshot of the whole page at 1280
pixels is copied there as ``audit-report-1280.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.unit.audit_ledgers import (
    COORDINATOR,
    OTHER_IDENTITY,
    Q1,
    Q2,
    LedgerBuilder,
    at,
    charge,
    federation,
    run_audit,
)
from tiaki.budget import format_amount
from tiaki.ledger_records import NODE_LEDGER, GrantRecord, PolicyRecord

WIDTH = 1280
WIDE = 1600
TALL = 12000  # taller than the page, so one screenshot holds all of it
MAGENTA = (255, 0, 255)
# The margins painted magenta, the body white: a CSP-allowed inline style.
MARGINS = "<style>html { background: #ff00ff !important; } body { background: #fff; }</style>"
# matplotlib's first three line colours, one per node panel.
NODE_COLOURS = {"ngo-a": (31, 119, 180), "ngo-b-id": (255, 127, 14), "ngo-c": (44, 160, 44)}

LONG_IDENTITY = "research-partnerships.university-of-otago.ac.nz"
LONG_ANALYST = "aroha.ngata+housing-study@research-partnerships.otago.ac.nz"
LONG_QUERY = (
    '{"kind":"count","group_by":["region","gender","age_band"],'
    '"filters":[{"column":"service","in":["housing","food","budgeting","employment"]}]}'
)
COUNT = '{"kind":"count","where":[]}'
# What an older node charged: OpenDP's privacy map, a binary float, written exactly.
FLOAT_CHARGE = format_amount(Fraction(0.1))


def _policy(limit: str) -> PolicyRecord:
    return PolicyRecord(
        node_id="ngo-c",
        definition="pure",
        period="quarterly",
        limit=Fraction(limit),
        lifetime_limit=Fraction(6),
        per_query_max=Fraction(1),
        coordinators=(
            GrantRecord(COORDINATOR, None, Fraction("1.5"), None),
            GrantRecord(OTHER_IDENTITY, None, None, None),
            GrantRecord(LONG_IDENTITY, None, Fraction(2), None),
        ),
    )


def three_nodes(folder: Path) -> list[Path]:
    """Exports of the shared federation's two nodes and coordinator, and of a third node,
    ngo-c, charged by a research identity the coordinator export does not cover."""
    fed = federation(folder / "keys")
    start = at("2026-03-30", "08:00:00")
    c = LedgerBuilder(folder / "keys", NODE_LEDGER, "ngo-c", start)
    c.add(_policy("2"), start)
    c.add(Q1, start)
    ask: dict[str, Any] = {"identity": LONG_IDENTITY, "analyst": LONG_ANALYST}
    c.add(
        charge(str(uuid.uuid4()), "0.5", "2026-Q1", canonical_query=LONG_QUERY, **ask),
        at("2026-03-30", "09:30:00"),
    )
    c.add(
        charge(str(uuid.uuid4()), FLOAT_CHARGE, "2026-Q1", canonical_query=COUNT, **ask),
        at("2026-03-31", "14:00:00"),
    )
    c.add(
        charge(str(uuid.uuid4()), "0.75", "2026-Q1", canonical_query=LONG_QUERY, **ask),
        at("2026-03-31", "16:00:00"),
    )
    c.add(Q2, at("2026-04-01", "00:00:00"))
    c.add(_policy("3"), at("2026-04-01", "12:00:00"))  # the NGO raised its quarterly limit
    c.add(
        charge(str(uuid.uuid4()), "1", "2026-Q2", canonical_query=LONG_QUERY, **ask),
        at("2026-04-02", "09:30:00"),
    )
    exports = folder / "exports"
    exports.mkdir()
    return [*fed.export_all(exports), c.export(exports / "ngo-c.jsonl")]


def _browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium binary on PATH (on Debian: apt-get install chromium)")
    return found


def _screenshot(browser: str, page: Path, png: Path, width: int, height: int) -> None:
    argv = [
        browser,
        "--headless",
        "--no-sandbox",  # running as root in a container, where the sandbox cannot start
        "--disable-gpu",
        "--hide-scrollbars",  # a scrollbar would take width from the page
        f"--user-data-dir={png.parent / 'chromium-profile'}",  # not the user's own profile
        f"--window-size={width},{height}",
        "--virtual-time-budget=2000",
        "--run-all-compositor-stages-before-draw",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert png.exists(), f"chromium wrote no screenshot: {run.stderr[-2000:]}"


def _pixels(png: Path) -> Any:
    image_module = pytest.importorskip("PIL.Image")
    numpy = pytest.importorskip("numpy")
    with image_module.open(png) as image:
        return numpy.asarray(image.convert("RGB"))


def _report(tmp_path: Path, capsys: Any) -> Path:
    pytest.importorskip("matplotlib")
    out = tmp_path / "audit.html"
    run = run_audit(capsys, "report", *three_nodes(tmp_path), "--format", "html", "--out", out)
    assert run.code == 0, run.err
    return out


def _with_margins(page: Path) -> Path:
    marked = page.with_name("audit-margins.html")
    text = page.read_text(encoding="utf-8")
    assert text.count("</head>") == 1
    marked.write_text(text.replace("</head>", MARGINS + "</head>"), encoding="utf-8")
    return marked


def test_the_report_fits_a_1280_pixel_window(tmp_path: Path, capsys: Any) -> None:
    browser = _browser()
    page = _with_margins(_report(tmp_path, capsys))
    png = tmp_path / "margins-1280.png"
    _screenshot(browser, page, png, WIDTH, TALL)
    pixels = _pixels(png)
    assert pixels.shape[1] == WIDTH
    margin = (pixels == MAGENTA).all(axis=2)  # True where the margin shows
    drawn = ~margin
    rows = drawn.any(axis=1)
    assert not rows[-1], "the page is taller than the window: raise TALL"
    # The body is the widest run of white on a row without overflow: the row
    # just below the body's top edge, where only the body's background is drawn.
    top = int(rows.argmax())
    body_left = int(drawn[top].argmax())
    body_right = WIDTH - 1 - int(drawn[top][::-1].argmax())
    assert body_left > 0 and body_right < WIDTH - 1, "the body has no margin at 1280 px"
    # Anything right of the body's edge is content that overflowed it (a table
    # too wide): every row must be margin colour there.
    overflow = drawn[:, body_right + 1 :].any(axis=1)
    assert not overflow.any(), f"content runs past the body on rows {overflow.nonzero()[0][:10]}"
    assert not drawn[:, :body_left].any(), "content runs past the body on the left"


def test_at_1600_pixels_the_page_stays_within_1280(tmp_path: Path, capsys: Any) -> None:
    browser = _browser()
    page = _with_margins(_report(tmp_path, capsys))
    png = tmp_path / "margins-1600.png"
    _screenshot(browser, page, png, WIDE, TALL)
    pixels = _pixels(png)
    assert pixels.shape[1] == WIDE
    drawn = ~(pixels == MAGENTA).all(axis=2)
    # The page is centred: a body of at most 1280 px leaves (1600 - 1280) / 2 on each side.
    side = (WIDE - WIDTH) // 2
    assert not drawn[:, :side].any() and not drawn[:, WIDE - side :].any()


def test_the_screenshot_shows_every_node_in_the_chart(tmp_path: Path, capsys: Any) -> None:
    browser = _browser()
    page = _report(tmp_path, capsys)
    numpy = pytest.importorskip("numpy")
    # First the height of the page, from a tall render, then a screenshot of exactly it.
    probe = tmp_path / "probe.png"
    _screenshot(browser, _with_margins(page), probe, WIDTH, TALL)
    drawn = ~(_pixels(probe) == MAGENTA).all(axis=2)
    height = int(drawn.any(axis=1).nonzero()[0][-1]) + 40
    png = tmp_path / "audit-report-1280.png"
    _screenshot(browser, page, png, WIDTH, height)
    pixels = _pixels(png)
    assert pixels.shape[:2] == (height, WIDTH)
    wanted = os.environ.get("TIAKI_SCREENSHOT_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(wanted) / png.name)
    for node, colour in NODE_COLOURS.items():
        near = (numpy.abs(pixels.astype(int) - colour) <= 24).all(axis=2)
        # A line across a panel spans hundreds of columns; a legend swatch alone,
        # all that shows of a line hidden under another, spans about thirty.
        columns = int(near.any(axis=0).sum())
        assert columns > 300, f"{node}'s line {colour} spans only {columns} px of the screenshot"
