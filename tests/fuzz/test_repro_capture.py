"""Every saved reproducer carries a pcapng of its exchange (issue 14): one replay with a
``fuzz.capture.Tape`` on its connection, framed in TCP with the socket's real addresses
and ports by the report's pcapng writer, and decoded by the real tshark.

The tshark test is marked ``peer`` (tshark is a peer tool, provisioned as root, as in
tests/report/test_capture.py): in CI a missing tshark fails, elsewhere it skips. The
round trip through the bridge's pcapng reader needs no tool and runs in the unit job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.bridge.capture import conversations
from iscsi_conformance.core import pdu as P
from iscsi_conformance.fuzz.campaign import Failure
from iscsi_conformance.fuzz.capture import Tape, record
from iscsi_conformance.fuzz.reference import InProcessSubject
from iscsi_conformance.fuzz.repro import load, save
from iscsi_conformance.target.connection import Connection

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"
KEY = ("internal-error", "RuntimeError at test_repro_capture.py:broken_handle")


@pytest.fixture
def broken_target(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A reference target that raises (an internal error) on a Text Request that comes
    straight after a Task Management Function Request on the same connection."""
    real = Connection.handle_pdu

    def broken_handle(self: Connection, pdu: P.PDU, now: float) -> None:
        last = getattr(self, "_fuzz_last", None)
        self._fuzz_last = type(pdu)  # type: ignore[attr-defined]
        if last is P.TaskManagementRequest and isinstance(pdu, P.TextRequest):
            raise RuntimeError("scripted breakage")
        real(self, pdu, now)

    monkeypatch.setattr(Connection, "handle_pdu", broken_handle)
    with InProcessSubject(IQN) as subject:
        yield subject


def _failure() -> Failure:
    tmf = P.TaskManagementRequest(
        immediate=True, function=1, itt=0x10, referenced_task_tag=0x99, cmdsn=0
    )
    text = P.TextRequest(final=True, itt=0x11, ttt=0xFFFFFFFF, cmdsn=0, data=b"SendTargets=All\0")
    return Failure(*KEY, detail="scripted", pdus=[P.encode(tmf), P.encode(text)])


def _saved(target: Any, tmp_path: Path) -> tuple[Path, Tape]:
    f = _failure()
    tape, seen = record(target.host, target.port, IQN, "ffp", [], f.pdus, health=target)
    assert KEY in seen, seen  # the replay that was recorded shows the failure
    return save(f, tmp_path, target="reference", tape=tape), tape


def test_reproducer_has_its_exchange_as_pcapng(broken_target: Any, tmp_path: Path) -> None:
    path, tape = _saved(broken_target, tmp_path)
    capture = path.with_suffix(".pcapng")
    assert load(path)["pcapng"] == capture.name
    assert "That replay showed this failure again." in path.read_text()
    assert f"-d tcp.port=={broken_target.port},iscsi" in path.read_text()
    # the real ports: the target's listening port, and our socket's
    assert tape.target == f"127.0.0.1:{broken_target.port}"
    assert tape.initiator.startswith("127.0.0.1:") and tape.initiator != tape.target
    (conv,) = conversations(capture, port=broken_target.port)
    assert conv.client_port == int(tape.initiator.rsplit(":", 1)[1])
    sent = conv.stream("i->t")  # type: ignore[arg-type]
    assert b"".join(_failure().pdus) in sent  # the reproducer's PDUs, as sent
    assert sent == b"".join(d for _t, direction, d in tape.chunks if direction == "i->t")
    assert conv.stream("t->i")  # type: ignore[arg-type]  # the target's answers too


def test_no_exchange_no_pcapng(tmp_path: Path) -> None:
    path = save(_failure(), tmp_path, target="reference", tape=Tape())
    assert not path.with_suffix(".pcapng").exists()
    assert "pcapng" not in load(path)
    tape = Tape(chunks=[(0.0, "i->t", b"\0" * 48)], target="127.0.0.1:3260", seen=set())
    assert (
        "That replay did NOT show it (it saw: no failure)"
        in save(_failure(), tmp_path, target="reference", tape=tape).read_text()
    )


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("tshark is required in CI (apt-get install tshark)", pytrace=False)
        pytest.skip("tshark is not installed")
    return path


@pytest.mark.peer
def test_tshark_decodes_the_reproducer_capture(broken_target: Any, tmp_path: Path) -> None:
    path, tape = _saved(broken_target, tmp_path)
    cmd = [_tshark(), "-r", str(path.with_suffix(".pcapng"))]
    cmd += ["-d", f"tcp.port=={broken_target.port},iscsi", "-Y", "iscsi", "-T", "fields"]
    cmd += ["-E", "separator=\t", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "iscsi.opcode"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    ours = int(tape.initiator.rsplit(":", 1)[1])
    sent = [
        int(op, 16) for s, d, ops in rows if int(d) == broken_target.port for op in ops.split(",")
    ]
    answered = [
        int(op, 16) for s, d, ops in rows if int(s) == broken_target.port for op in ops.split(",")
    ]
    assert all(int(s) == ours for s, d, _ in rows if int(d) == broken_target.port), rows
    # Login Requests (a stage each), then the reproducer's TMF Request and Text Request,
    # then the replay's NOP-Out ping
    assert sent[0] == 0x03 and [op for op in sent if op != 0x03] == [0x02, 0x04, 0x00], rows
    assert answered[0] == 0x23, rows  # a Login Response


def test_replay_writes_its_exchange_on_request(broken_target: Any, tmp_path: Path) -> None:
    from iscsi_conformance.fuzz.cli import main

    path = save(_failure(), tmp_path, target="reference")
    url = f"iscsi://127.0.0.1:{broken_target.port}/{IQN}"
    out = tmp_path / "again.pcapng"
    # by URL the target's log is not ours to read: the internal error is not seen
    assert main(["replay", str(path), "--url", url, "--pcap", str(out)]) == 0
    (conv,) = conversations(out, port=broken_target.port)
    assert b"".join(_failure().pdus) in conv.stream("i->t")  # type: ignore[arg-type]
