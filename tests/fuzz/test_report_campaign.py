"""``fuzz --report DIR`` puts the campaign in a report folder (issue 14): DIR/fuzz/PEER.json,
its reproducers (each with the pcapng of one replay) in DIR/fuzz/PEER/, and the index
written afterwards shows a Fuzz section with them. Proven with the in-memory engine
campaign against a reference target scripted to raise on one PDU sequence (found, saved,
linked) and against the real one (no failure).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.fuzz.cli import main
from iscsi_conformance.fuzz.repro import load
from iscsi_conformance.report import Results, write_html
from iscsi_conformance.target.connection import Connection


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference target raises on a Text Request straight after a TMF Request."""
    real = Connection.handle_pdu

    def broken_handle(self: Connection, pdu: P.PDU, now: float) -> None:
        last = getattr(self, "_fuzz_last", None)
        self._fuzz_last = type(pdu)  # type: ignore[attr-defined]
        if last is P.TaskManagementRequest and isinstance(pdu, P.TextRequest):
            raise RuntimeError("scripted breakage")
        real(self, pdu, now)

    monkeypatch.setattr(Connection, "handle_pdu", broken_handle)


def test_failures_land_in_the_report_with_reproducer_and_capture(
    broken: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    argv = ["engine", "--seconds", "6", "--cases", "3000", "--seed", "3", "--report", str(out)]
    assert main(argv) == 1, capsys.readouterr().out
    doc = json.loads((out / "fuzz" / "engine.json").read_text())
    assert doc["cases"] > 0 and doc["command"][:3] == ["iscsi-conformance", "fuzz", "engine"]
    (f,) = [
        f for f in doc["failures"] if "scripted" in f["detail"] or "broken_handle" in f["place"]
    ]
    assert f["reproducer"].startswith("fuzz/engine/") and f["pcapng"].endswith(".pcapng")
    assert (out / f["pcapng"]).stat().st_size > 0
    assert load(out / f["reproducer"])["pcapng"] == Path(f["pcapng"]).name
    index = write_html(Results(), out).read_text()
    assert 'data-peer="engine"' in index and f'href="{f["reproducer"]}"' in index


def test_a_clean_campaign_is_reported_as_such(tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["engine", "--seconds", "1", "--seed", "1", "--report", str(out), "--quiet"]
    assert main(argv) == 0
    doc = json.loads((out / "fuzz" / "engine.json").read_text())
    assert doc["failures"] == [] and doc["cases"] > 0 and doc["seconds"] <= 1.5
    assert not (out / "fuzz" / "engine").exists()
