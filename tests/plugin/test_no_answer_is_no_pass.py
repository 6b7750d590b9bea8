"""Silence and a hang-up are not answers: the suite's own proof.

The reference target runs behind the suite's proxy (``harness.observer``), which turns
every Login Response with a non-zero status into either a hang-up (the proxy closes
both sides) or silence (nothing more reaches the initiator, whose connection stays
open). RFC 7143 11.13.5 gives a failed login one form, a final Login Response with a
non-zero status class, so every test that passes against the plain reference target
*because* it saw such a response must fail against both proxies, and its failure
message must say what happened instead. ``certify`` runs the Login and CHAP areas
(the areas where a refusal is the expected answer) in a subprocess, as a vendor would.

The one test let off names its reason: ``Login.Session.NonLoginOpcodeBeforeFullFeature``
checks that a NOP-Out during login is not answered with a NOP-In (RFC 7143 8.1.2); the
RFC does not say what the target answers instead, so a hang-up or silence conforms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.observer import ObservedConnection, Observer
from iscsi_conformance.target.config import ChapConfig, simple_config
from iscsi_conformance.target.server import TargetServer

IQN = "iqn.2024-01.org.example:no-answer"
USER, SECRET = "no-answer-user", "no-answer-secret-16"
#: Tests whose requirement is met by any outcome but the forbidden one (see above).
ANY_OUTCOME_BUT_ONE = {"Login.Session.NonLoginOpcodeBeforeFullFeature"}
ANSWER_TIMEOUT = "0.5"  # seconds a silent step waits (the suite's default is 5)


def _rewrite(mode: str) -> Any:
    def rewrite(conn: ObservedConnection, direction: str, pdu: P.PDU) -> Any:
        if direction == "t->i" and isinstance(pdu, P.LoginResponse) and pdu.status_class:
            if mode == "hangup":
                conn.hang_up()
            else:
                conn.mute()
            return None
        return pdu

    return rewrite if mode != "plain" else None


def _certify(mode: str, suite: str, chap: bool, out: Path) -> list[dict[str, Any]]:
    config = simple_config(("127.0.0.1", 0), IQN, ["16M"])
    if chap:
        target = dataclasses.replace(config.targets[0], chap=ChapConfig(USER, SECRET))
        config = dataclasses.replace(config, targets=[target])
    server = TargetServer(config)
    server.start_in_thread()
    observer = Observer(*server.portal(), rewrite=_rewrite(mode), label=mode)
    host, port = observer.start()
    cred = f"{USER}%{SECRET}@" if chap else ""
    env = {**os.environ, "ISCSI_CONFORMANCE_ANSWER_TIMEOUT": ANSWER_TIMEOUT}
    try:
        subprocess.run(
            [sys.executable, "-m", "iscsi_conformance.cli", "certify", "-q",
             f"iscsi://{cred}{host}:{port}/{IQN}/0", "--suite", suite, "--report", str(out)],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        observer.stop()
        server.stop_thread()
    return json.loads((out / "results.json").read_text())["tests"]  # type: ignore[no-any-return]


def _saw_a_refusal(test: dict[str, Any]) -> bool:
    pdus = (test.get("evidence") or {}).get("pdus", [])
    return any(
        p.get("opcode") == "LoginResponse" and "status_class=" in p.get("summary", "") for p in pdus
    )


@pytest.mark.parametrize(("suite", "chap"), [("Login", False), ("CHAP", True)])
def test_no_answer_never_passes_for_a_refusal(suite: str, chap: bool, tmp_path: Path) -> None:
    plain = _certify("plain", suite, chap, tmp_path / "plain")
    refusing = {
        t["id"] for t in plain if t["outcome"] == "passed" and _saw_a_refusal(t)
    } - ANY_OUTCOME_BUT_ONE
    assert refusing, f"no {suite} test saw a refusal from the plain reference target"
    for mode, words in (("hangup", "closed the connection"), ("silent", "nothing within")):
        results = {t["id"]: t for t in _certify(mode, suite, chap, tmp_path / mode)}
        still = sorted(i for i in refusing if results.get(i, {}).get("outcome") != "failed")
        assert not still, f"{mode}: these tests took no answer for a refusal: {still}"
        unclear = sorted(i for i in refusing if words not in results[i].get("message", ""))
        assert not unclear, f"{mode}: the failure does not say what happened: {unclear}"
