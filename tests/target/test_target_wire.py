"""An independent oracle: tshark dissects what the reference target puts on the
wire, with CRC32C header and data digests, and must find nothing malformed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from target_helpers import DISK, NONE_TAG, RawInitiator, read16, write16

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.target.server import TargetServer

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(
        shutil.which("tshark") is None or os.geteuid() != 0, reason="needs tshark and root"
    ),
]


def _wait_until_capturing(tshark: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Block until tshark says it captures: a fixed sleep lost the whole exchange
    when tshark started late on a loaded machine (CI, load 15)."""
    assert tshark.stderr is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = tshark.stderr.readline()
        if not line:
            break  # tshark exited
        seen.append(line.strip())
        if "Capture started" in line:  # dumpcap listens ("Capturing on" comes earlier)
            return
    pytest.fail(f"tshark did not start capturing within {timeout:.0f} s: {seen[-3:]}")


def test_tshark_finds_no_malformed_pdus(server: TargetServer, tmp_path: Path) -> None:
    host, port = server.portal()
    cap = tmp_path / "cap.pcapng"
    tshark = subprocess.Popen(
        ["tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(cap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_capturing(tshark)
        ini = RawInitiator((host, port))
        rsp = ini.login(
            DISK, params=[("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C,None")]
        )
        assert rsp.status == 0 and ini.hd and ini.dd
        ini.clear_ua()
        payload = os.urandom(96 * 1024)
        assert ini.scsi(write16(0, 192), write=payload)[0].status == 0
        assert ini.scsi(read16(0, 192), read=len(payload))[1] == payload
        ini.send(
            P.TextRequest(
                final=True,
                itt=ini.next_itt(),
                ttt=NONE_TAG,
                cmdsn=ini.cmdsn,
                expstatsn=ini.expstatsn,
                data=T.format_pairs([("SendTargets", "")]),
            )
        )
        assert isinstance(ini.recv(), P.TextResponse)
        ini.logout()
        ini.close()
        time.sleep(1.0)
    finally:
        tshark.terminate()
        tshark.wait(30)  # it writes what it still buffers as it stops: slow under load
    decode = ["tshark", "-r", str(cap), "-d", f"tcp.port=={port},iscsi"]
    pdus = subprocess.run(
        [*decode, "-Y", "iscsi", "-T", "fields", "-e", "iscsi.opcode"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert len(pdus) >= 10, "tshark decoded no iSCSI"
    digests = subprocess.run(
        [*decode, "-Y", "iscsi.headerdigest32", "-T", "fields", "-e", "iscsi.opcode"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert len(digests) >= 5, (
        "tshark saw no header digests: it must have learnt them from the login"
    )
    bad = subprocess.run(
        [*decode, "-Y", "iscsi && (_ws.malformed || _ws.expert.severity >= warning)"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert bad.strip() == "", bad
