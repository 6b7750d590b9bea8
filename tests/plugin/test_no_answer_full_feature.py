"""Silence and a hang-up are not answers in full feature phase either: the suite's proof.

The reference target runs behind the suite's proxy (``harness.observer``). Once the
initiator has sent a request under test in full feature phase (a SNACK, a Text
Request, a Task Management Function Request, a Logout Request, an unknown opcode, a
NOP-Out longer than any receive limit), the proxy turns the target's answer into
either a hang-up (it closes both sides) or silence (nothing more reaches the
initiator, whose connection stays open). Every test of those areas that passes
against the plain reference target must fail against both proxies, with a failure
message that says what happened, unless RFC 7143 allows that outcome:

- ``FullFeature.Snack.Erl0.<type>``: at ErrorRecoveryLevel 0 a SNACK is a protocol
  error that may be escalated to session recovery, the only recovery of level 0
  (7.1.5), so the end of the connection conforms (silence does not);
- ``FullFeature.Text.FinalAndContinue``, ``FullFeature.Text.ReservedItt``: F=1 with
  C=1, or the reserved tag 0xffffffff, is a format error, on which the target must end
  the connection (7.7);
- ``FullFeature.TaskManagement.UnknownFunction``: an unassigned function is an illegal
  header field, a format error (7.7), so ending the connection conforms;
- ``FullFeature.TaskManagement.ItNexusReset``: RFC 7144 6.3 has the target drop every
  connection of the session after I_T NEXUS RESET, whose response may be lost (6.4.2),
  so ending the connection conforms (the test then checks the other nexus and the
  issuing nexus's unit attention, which the target behind the proxy did produce);
- ``FullFeature.Reject.DataSegmentTooLong``: past the receiver's
  MaxRecvDataSegmentLength the framing is lost and the connection may end;
- ``FullFeature.Reject.PayloadDigestReason``: either side may escalate a digest error
  to session recovery (7.8), so the end of the connection conforms. Its request (a
  NOP-Out whose data digest fails) is not taken apart by the proxy; the Reject of a
  payload digest error (reason 02h) is the answer taken away.

``certify`` runs those areas in a subprocess, as a vendor would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.observer import ObservedConnection, Observer
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.server import TargetServer

IQN = "iqn.2024-01.org.example:no-answer-ffp"
SUITES = (  # the negative tests: each expects an answer that refuses or rejects
    "FullFeature.Snack.Erl0",
    "FullFeature.Text.LoginOnlyKey",
    "FullFeature.Text.UnknownTtt",
    "FullFeature.Text.ReservedItt",
    "FullFeature.Text.FinalAndContinue",
    "FullFeature.TaskManagement",
    "FullFeature.Logout",
    "FullFeature.Reject",
)
#: Tests whose requirement a hang-up meets (see the module docstring); none is met by silence.
HANG_UP_CONFORMS = {
    "FullFeature.Snack.Erl0.DataSnack",
    "FullFeature.Snack.Erl0.StatusSnack",
    "FullFeature.Snack.Erl0.DataAck",
    "FullFeature.Snack.Erl0.RDataSnack",
    "FullFeature.Text.FinalAndContinue",
    "FullFeature.Text.ReservedItt",
    "FullFeature.TaskManagement.UnknownFunction",
    "FullFeature.TaskManagement.ItNexusReset",
    "FullFeature.Reject.DataSegmentTooLong",
    "FullFeature.Reject.PayloadDigestReason",
}
#: Verdicts that are not a pass: a MUST broken, a SHOULD broken, or a recorded observation.
CAUGHT = {"failed", "non-strict", "informational"}
ANSWER_TIMEOUT = "0.5"  # seconds a silent step waits (the suite's default is 5)


def _under_test(pdu: P.PDU) -> bool:
    """A request whose answer the proxy takes away."""
    if isinstance(pdu, P.SnackRequest | P.TextRequest | P.TaskManagementRequest | P.LogoutRequest):
        return True
    if isinstance(pdu, P.UnknownPDU):
        return True
    return isinstance(pdu, P.NopOut) and len(pdu.data) > 8192


def _rewrite(mode: str) -> Any:
    armed: set[int] = set()
    first: dict[str, int] = {}

    def rewrite(conn: ObservedConnection, direction: str, pdu: P.PDU) -> Any:
        first.setdefault("index", conn.index)
        if not conn.in_full_feature or conn.index == first["index"]:
            return pdu  # the first connection is certify's own check (login, logout)
        if direction == "i->t":
            if _under_test(pdu):
                armed.add(conn.index)
            return pdu
        if isinstance(pdu, P.Reject) and pdu.reason == 0x02:
            armed.add(conn.index)  # the answer to a payload digest error (7.8)
        if conn.index in armed:
            if mode == "hangup":
                conn.hang_up()
            else:
                conn.mute()
            return None
        return pdu

    return rewrite if mode != "plain" else None


def _certify(mode: str, out: Path) -> list[dict[str, Any]]:
    server = TargetServer(simple_config(("127.0.0.1", 0), IQN, ["16M"]))
    server.start_in_thread()
    observer = Observer(*server.portal(), rewrite=_rewrite(mode), label=mode)
    host, port = observer.start()
    env = {**os.environ, "ISCSI_CONFORMANCE_ANSWER_TIMEOUT": ANSWER_TIMEOUT}
    suites = [arg for s in SUITES for arg in ("--suite", s)]
    try:
        subprocess.run(
            [sys.executable, "-m", "iscsi_conformance.cli", "certify", "-q", "--allow-dataloss",
             f"iscsi://{host}:{port}/{IQN}/0", *suites, "--report", str(out)],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        observer.stop()
        server.stop_thread()
    return json.loads((out / "results.json").read_text())["tests"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, Any]]]:
    """The three certify runs (plain, hang-up, silent), side by side: each waits on
    time-outs far more than it computes."""
    out = tmp_path_factory.mktemp("no-answer-ffp")
    modes = ("plain", "hangup", "silent")
    with ThreadPoolExecutor(max_workers=len(modes)) as pool:
        done = dict(zip(modes, pool.map(lambda m: _certify(m, out / m), modes), strict=True))
    return {mode: {t["id"]: t for t in tests} for mode, tests in done.items()}


@pytest.mark.slow  # ~50 s: three certify runs side by side, waiting on time-outs
@pytest.mark.parametrize(
    ("mode", "words"), [("hangup", "closed the connection"), ("silent", "nothing within")]
)
def test_no_answer_never_passes_in_full_feature(
    runs: dict[str, dict[str, dict[str, Any]]], mode: str, words: str
) -> None:
    plain = {i for i, t in runs["plain"].items() if t["outcome"] == "passed"}
    assert plain >= HANG_UP_CONFORMS, f"not green when answered: {HANG_UP_CONFORMS - plain}"
    results = runs[mode]
    allowed = HANG_UP_CONFORMS if mode == "hangup" else set()
    still = sorted(i for i in plain - allowed if results.get(i, {}).get("outcome") not in CAUGHT)
    assert not still, f"{mode}: these tests took no answer for an answer: {still}"
    unclear = sorted(i for i in plain - allowed if words not in results[i].get("message", ""))
    assert not unclear, f"{mode}: the failure does not say what happened: {unclear}"
    wrong = sorted(i for i in allowed if results.get(i, {}).get("outcome") != "passed")
    assert not wrong, f"{mode}: the RFC allows this outcome, yet these tests failed: {wrong}"
