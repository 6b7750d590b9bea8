"""A test's capture (report/pcapng.py) judged by the real tshark.

The failing CHAP test of the sample (its PDUs encoded by ``core.pdu``) is written as
pcapng, plain and gzip-compressed; tshark must read every packet, find the iSCSI PDUs
where our trace has them (opcode, Initiator Task Tag, addresses and ports), and show
the packet comment on the PDU that shows the failure. Marked ``peer``: tshark is a peer
tool, provisioned as root; in CI a missing tshark fails, elsewhere the test skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from iscsi_conformance.report import Results, TestResult
from iscsi_conformance.report.pcapng import offending_index, write_capture

pytestmark = pytest.mark.peer


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("tshark is required in CI (apt-get install tshark)", pytrace=False)
        pytest.skip("tshark is not installed")
    return path


def _fields(path: Path, *fields: str, port: int) -> list[list[str]]:
    cmd = [_tshark(), "-r", str(path), "-d", f"tcp.port=={port},iscsi"]
    cmd += ["-o", "tcp.desegment_tcp_streams:FALSE", "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


@pytest.fixture
def failing(sample: Results) -> TestResult:
    t = next(
        t
        for t in sample.tests
        if t.id == "CHAP.Mutual.ReflectedChallengeRefused" and t.pairing == "reference×tgt"
    )
    # the addresses the sockets had (format 2.1), one connection
    t.evidence.connections = [
        {"label": "login", "initiator": "192.0.2.10:51234", "target": "192.0.2.20:3260"}
    ]
    for p in t.evidence.pdus:
        p.connection = 0
    return t


@pytest.mark.parametrize("suffix", [".pcapng", ".pcapng.gz"])
def test_tshark_reads_the_capture_and_its_comment(
    failing: TestResult, tmp_path: Path, suffix: str
) -> None:
    path = write_capture(failing, tmp_path / f"capture{suffix}")
    assert path is not None
    rows = _fields(
        path,
        "ip.src",
        "tcp.srcport",
        "ip.dst",
        "tcp.dstport",
        "iscsi.opcode",
        "iscsi.initiatortasktag",
        "frame.comment",
        port=3260,
    )
    pdus = failing.evidence.pdus
    assert len(rows) == 3 + len(pdus)  # the handshake, then one segment per PDU
    data_rows = [r for r in rows if r[4]]
    assert len(data_rows) == len(pdus)
    marked = offending_index(failing)
    assert marked is not None
    for row, p in zip(data_rows, pdus, strict=True):
        raw = bytes.fromhex(p.hex)
        src = ("192.0.2.10", "51234") if p.direction == "i->t" else ("192.0.2.20", "3260")
        assert (row[0], row[1]) == src
        assert int(row[4], 16) == raw[0] & 0x3F  # tshark's opcode: the 6-bit value
        assert int(row[5], 16) == int.from_bytes(raw[16:20], "big")
    comment = data_rows[marked][6]
    assert "CHAP.Mutual.ReflectedChallengeRefused failed here" in comment
    assert "R7143-12.1.3-5" in comment
    assert "test CHAP.Mutual.ReflectedChallengeRefused on reference×tgt" in rows[0][6]


def test_older_results_get_stand_in_addresses(sample: Results, tmp_path: Path) -> None:
    t = next(
        t
        for t in sample.tests
        if t.key == ("CHAP.Mutual.ReflectedChallengeRefused", "reference×tgt")
    )
    path = write_capture(t, tmp_path / "old.pcapng")
    assert path is not None
    rows = _fields(path, "ip.src", "tcp.dstport", "iscsi.opcode", "frame.comment", port=3260)
    assert {r[0] for r in rows} == {"127.0.0.1", "127.0.0.2"}
    assert "addresses not recorded" in rows[0][3]
    assert sum(1 for r in rows if r[2]) == len(t.evidence.pdus)
