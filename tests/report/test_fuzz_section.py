"""The Fuzz section of a report folder's index (report/fuzz.py, issue 14): one block per
peer whose campaign ``fuzz --report DIR`` left in DIR/fuzz/, with its cases, rate and
failures, each linked to its reproducer and capture; a campaign file that is not one is
skipped with a note; no campaign, no section. The end-to-end check (the CLI writing a
campaign the index then shows) is tests/fuzz/test_report_campaign.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from iscsi_conformance.report import Results, write_html
from iscsi_conformance.report.fuzz import (
    FuzzCampaign,
    FuzzFailure,
    campaign_path,
    load_campaigns,
)


def _write(out: Path, c: FuzzCampaign) -> None:
    path = campaign_path(out, c.peer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(c.to_json()), encoding="utf-8")


def _campaigns(out: Path) -> None:
    crash = FuzzFailure(
        kind="liveness", place="dead: tgtd exited with status -11 (SIGSEGV)",
        requirement="", level="MUST", count=3, detail="cannot connect: refused",
        reproducer="fuzz/tgt/liveness--dead.py", pcapng="fuzz/tgt/liveness--dead.pcapng",
        replay="iscsi-conformance fuzz replay fuzz/tgt/liveness--dead.py",
    )  # fmt: skip
    _write(out, FuzzCampaign(peer="tgt", seconds=10.0, cases=2900, pdus=4610, seed=7,
                             failures=[crash]))  # fmt: skip
    _write(out, FuzzCampaign(peer="reference", seconds=4.0, cases=8000, pdus=12000))
    (out / "fuzz" / "junk.json").write_text('{"format": "something else"}', encoding="utf-8")


def test_index_shows_each_campaign_with_its_reproducers(small: Results, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _campaigns(out)
    text = write_html(small, out, generated="2025-01-01T00:00:00+00:00").read_text()
    assert '<a href="#fuzz">Fuzz</a>' in text and '<section id="fuzz"' in text
    assert text.index('data-peer="reference"') < text.index('data-peer="tgt"')
    tgt = text[text.index('data-peer="tgt"') :]
    assert 'data-failures="1"' in tgt and "2900 cases" in tgt and "290 cases/s, 461 PDUs/s" in tgt
    assert (
        'href="fuzz/tgt/liveness--dead.py"' in tgt
        and 'href="fuzz/tgt/liveness--dead.pcapng"' in tgt
    )
    assert "tgtd exited with status -11 (SIGSEGV)" in tgt
    ref = text[text.index('data-peer="reference"') : text.index('data-peer="tgt"')]
    assert 'data-failures="0"' in ref and "No failure." in ref and "2000 cases/s" in ref
    assert "fuzz/junk.json skipped: not an iscsi-conformance-fuzz file" in text


def test_no_campaign_no_section(small: Results, tmp_path: Path) -> None:
    text = write_html(small, tmp_path / "out").read_text()
    assert 'id="fuzz"' not in text and "#fuzz" not in text


def test_campaign_round_trip(tmp_path: Path) -> None:
    _campaigns(tmp_path)
    campaigns, notes = load_campaigns(tmp_path)
    assert [c.peer for c in campaigns] == ["reference", "tgt"] and len(notes) == 1
    assert campaigns[1].failures[0].count == 3 and campaigns[1].seed == 7
    assert FuzzCampaign.from_json(campaigns[1].to_json()) == campaigns[1]


def test_a_slow_initiator_campaign_shows_its_rate(small: Results, tmp_path: Path) -> None:
    """An open-iscsi campaign runs a case every 20 s or so: its rate is not rounded to 0."""
    out = tmp_path / "out"
    _write(out, FuzzCampaign(peer="open-iscsi-initiator", role="initiator", seconds=400.0,
                             cases=20, pdus=17))  # fmt: skip
    text = write_html(small, out).read_text()
    assert "0.05 cases/s, 0.04 PDUs/s" in text, text[text.index('id="fuzz"') :][:2000]
