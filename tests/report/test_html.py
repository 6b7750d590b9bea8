"""The HTML page, checked as text (the DOM in a real browser: test_browser.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from iscsi_conformance.report import Results, TestResult, render_html, write_html
from iscsi_conformance.report.render_html import build_view


class Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, dict[str, str]] = {}
        self.not_run = 0
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "td" and "cell" in (a.get("class") or ""):
            if a.get("data-pairing"):
                self.cells[a["data-pairing"] or ""] = {k: v or "" for k, v in a.items()}
            else:
                self.not_run += 1


def test_matrix_cells_and_counts(small: Results) -> None:
    html = render_html(small)
    p = Cells()
    p.feed(html)
    assert set(p.cells) == {
        "reference×tgt",
        "reference×iscsi://192.0.2.10:3260/iqn.2003-01.org.example:disk1/0",
        "open-iscsi×tgt",
    }
    assert p.not_run == 1  # open-iscsi x the URL target was not run
    c = p.cells["reference×tgt"]
    assert (
        c["data-passed"],
        c["data-failed"],
        c["data-xfailed"],
        c["data-skipped"],
        c["data-total"],
    ) == ("1", "1", "1", "1", "4")
    assert c["data-verdict"] == "fail"
    assert p.cells["open-iscsi×tgt"]["data-verdict"] == "review"  # an xpass: manifest out of date
    assert "third-party URL" in html and "192.0.2.10:3260 …disk1/0" in html


def test_everything_is_escaped(small: Results) -> None:
    html = render_html(small)
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    small.tests[0].id = "Login.X.<script>alert(1)</script>"
    assert "<script>alert(1)" not in render_html(small)


def test_self_contained(small: Results) -> None:
    html = render_html(small)
    assert not re.search(r"<link\b|<script[^>]+src=|<img\b|@import|url\(", html, re.I)
    # the only absolute URLs are plain links (RFC sections), never loaded resources
    for m in re.finditer(r"(?:href|src)=\"(https?:[^\"]*)\"", html):
        assert m.group(0).startswith('href="https://www.rfc-editor.org/rfc/'), m.group(0)


def test_drill_down_content(small: Results) -> None:
    html = render_html(small)
    assert "A wrong CHAP response fails the login." in html  # requirement text from the catalog
    assert "R-UNKNOWN-1" in html and "not in the embedded requirements catalog" in html
    assert "Known deviation:</strong> tgt accepts 256" in html
    assert "Skipped:</strong> no crc32c" in html
    assert "captures/chap.pcapng" in html
    assert 'class="hexdump"' in html and "Opcode" in html  # annotated from core.layout
    assert "https://www.rfc-editor.org/rfc/rfc7143#section-12.1.3" in html


def test_coverage_numbers(small: Results) -> None:
    view = build_view(small)
    cov = view.coverage
    assert cov is not None
    assert sorted(cov.covered) == ["R7143-12.1.3-3", "R7143-13.12-1", "R7143-6.2-1"]
    assert [r.id for r in cov.uncovered] == ["R7143-9.9-9"]
    assert cov.unknown_ids == ["R-UNKNOWN-1"]
    tgt = next(pc for pc in cov.peers if pc.name == "tgt")
    assert (tgt.applicable, tgt.passed, tgt.deviation, tgt.failed) == (
        3,
        ["R7143-6.2-1"],
        ["R7143-13.12-1"],
        ["R7143-12.1.3-3"],
    )
    ref_init = next(pc for pc in cov.peers if pc.name == "reference" and pc.role == "initiator")
    assert ref_init.tested == 0  # target tests do not count against the instrument


def test_empty_and_catalogless_results(tmp_path: Path) -> None:
    html = render_html(Results())
    assert "No pairings in these results." in html and "No requirements catalog" in html
    r = Results()
    r.add_test(TestResult("A.B.C", "x×y", "skipped"))
    assert 'data-verdict="skipped"' in render_html(r)


def test_write_html(tmp_path: Path, small: Results) -> None:
    page = write_html(small, tmp_path / "out", generated="2025-01-01T00:00:00+00:00")
    assert page == tmp_path / "out" / "index.html"
    text = page.read_text()
    assert "2025-01-01 00:00:00 UTC" in text and 'href="results.json"' in text
    assert Results.load(tmp_path / "out" / "results.json").tests
