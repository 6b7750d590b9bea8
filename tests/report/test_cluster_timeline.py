"""The picture of a Cluster scenario's timeline (report/cluster_timeline.py, issue 13):
lanes per node, the holder and the registrants per state point, commands coloured by
status, events as lines; every text escaped; a cell page shows it."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from iscsi_conformance.report import Results, write_html
from iscsi_conformance.report.cluster_timeline import CONFLICT, GOOD, HOLDER, REGISTERED, render

#: A node restarting with a new ISID, as Cluster.Restart.NewIsid records it (shortened).
RESTART: list[dict[str, Any]] = [
    {
        "scenario": "restart-new-isid",
        "target": "lio",
        "lun": 0,
        "nodes": [
            {"name": "A", "initiator": "iqn.x:a", "isid": "0x800000000001"},
            {"name": "B", "initiator": "iqn.x:b", "isid": "0x800000000002"},
        ],
        "events": [
            {"t": 0.0, "node": "A", "kind": "event", "what": "login ISID 0x800000000001"},
            {"t": 0.01, "node": "A", "kind": "command", "what": "PR OUT RESERVE", "status": "GOOD"},
            {"t": 0.02, "node": "A", "kind": "event", "what": "connection lost (node failed)"},
            {
                "t": 0.03,
                "node": "B",
                "kind": "state",
                "what": "A back with a new ISID",
                "holder": ["A (stale nexus)"],
                "type": 5,
                "registered": {"A (stale nexus)": "0x1", "B": "0x2"},
                "generation": 3,
            },
            {
                "t": 0.04,
                "node": "A",
                "kind": "command",
                "what": "WRITE(10) <script>alert(1)</script>",
                "status": "RESERVATION CONFLICT",
            },
        ],
        "facts": {"stale_nexus": ["iqn.x:a,i,0x800000000001"]},
    }
]


class Svg(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> Svg:
    p = Svg()
    p.feed(html)
    return p


def test_lanes_states_commands_and_events() -> None:
    p = _parse(render(RESTART))
    text = " ".join(p.text)
    # a lane per node, and one for the stale nexus the state names
    assert "A" in text and "B" in text and "A (stale nexus)" in text
    fills = [a.get("fill") for t, a in p.tags if t == "rect"]
    assert fills.count(HOLDER) == 1 and fills.count(REGISTERED) == 1
    dots = [a.get("fill") for t, a in p.tags if t == "circle"]
    assert dots == [GOOD, CONFLICT]
    dashed = [a for t, a in p.tags if t == "line" and a.get("stroke-dasharray")]
    assert len(dashed) == 2  # the login and the failure
    assert "stale_nexus" in text


def test_every_text_is_escaped() -> None:
    html = render(RESTART)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert render("<b>not a timeline</b>") == "<code>&lt;b&gt;not a timeline&lt;/b&gt;</code>"
    assert render([{"scenario": "empty"}]).startswith("<figure")


def test_a_cell_page_draws_the_timeline(small: Results, tmp_path: Path) -> None:
    small.tests[0].evidence.extra = {"cluster_timeline": RESTART}
    write_html(small, tmp_path)
    pages = [p.read_text(encoding="utf-8") for p in (tmp_path / "cells").glob("*.html")]
    drawn = [page for page in pages if 'class="cluster-timeline"' in page]
    assert len(drawn) == 1
    assert "<svg" in drawn[0] and "&lt;script&gt;" in drawn[0] and "<script>alert" not in drawn[0]
