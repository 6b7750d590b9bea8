"""Silence, a hang-up and an empty answer are not answers: the suite's own proof.

The reference target runs behind the suite's proxy (``harness.observer``), which changes
what the target answers in one of three ways:

- *hangup*: every Login Response with a non-zero status, every Text Response and every
  Reject becomes a hang-up (the proxy closes both sides);
- *silent*: the same answers become silence (nothing more reaches the initiator, whose
  connection stays open);
- *empty*: every Text Response loses its text, and every successful Login Response loses
  its answers to the numerical keys the initiator offered (RFC 7143 6.2.2: a numerical
  offer is always answered).

RFC 7143 11.13.5 gives a failed login one form, a final Login Response with a non-zero
status class; 11.11 answers a Text Request with Text Responses; appendix C says what a
SendTargets answer lists. So every test that passes against the plain reference target
*because* it saw such an answer must fail against the proxy, and for silence and a
hang-up its failure message must say what happened instead. ``certify`` runs the areas
in subprocesses, as a vendor would, all of them side by side (the silent runs spend most
of their time waiting).

The tests let off name their reason:

- ``Login.Session.NonLoginOpcodeBeforeFullFeature`` checks that a NOP-Out during login is
  not answered with a NOP-In (RFC 7143 8.1.2); the RFC does not say what the target
  answers instead, so a hang-up or silence conforms;
- ``Login.Session.DiscoveryRejectsScsi`` takes a dropped connection for the answer to a
  SCSI command in a Discovery session (as a Reject would be), so only silence must fail it;
- ``Login.Stages.TransitAndContinueBothSet``: T and C together are a format error, on
  which RFC 7143 7.7 has the receiver close the connection, so only silence must fail it;
- ``Login.Session.NonLoginPduRefused``: a NOP-Out during login ends the login with a
  Login reject or a disconnect (RFC 7143 8.1.2), so only silence must fail it;
- ``Discovery.SendTargets.UnknownName``: an empty text is the right answer to a name the
  target does not have.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.keys import KEYS, ResultFunction, ValueKind
from iscsi_conformance.core.text import format_pairs, parse_pairs
from iscsi_conformance.harness.observer import ObservedConnection, Observer
from iscsi_conformance.target.config import ChapConfig, simple_config
from iscsi_conformance.target.server import TargetServer

IQN = "iqn.2024-01.org.example:no-answer"
USER, SECRET = "no-answer-user", "no-answer-secret-16"
#: Seconds a step waits before it counts as silence (the suite's default is 5). Where the
#: proxy mutes answers the wait is the cost, and a slow answer taken for silence fails
#: the test all the same; elsewhere a wait only ends early on a loaded machine.
SILENT_TIMEOUT, ANSWER_TIMEOUT = "0.3", "2"
FAST_PYTEST = "--assert=plain -p no:hypothesispytest"

#: Keys whose offer is always answered (numerical, min or max function: RFC 7143 6.2.2).
NUMERICAL = frozenset(
    k.name
    for k in KEYS.values()
    if k.kind is ValueKind.NUMBER and k.result_function in (ResultFunction.MIN, ResultFunction.MAX)
)
#: Tests that pass whatever the outcome, but the one the RFC forbids (see above).
ANY_OUTCOME_BUT_ONE = {"Login.Session.NonLoginOpcodeBeforeFullFeature"}
#: Tests for which a hang-up conforms but silence does not (see above).
SILENCE_ONLY = {
    "Login.Session.DiscoveryRejectsScsi",
    "Login.Stages.TransitAndContinueBothSet",
    "Login.Session.NonLoginPduRefused",
}
#: Tests that need a numerical key answered, a SendTargets text, or both: the empty
#: answers must fail them.
NEEDS_CONTENT = re.compile(
    r"^(Discovery\.(?!SendTargets\.UnknownName$)"
    rf"|Login\.Keys\.({'|'.join(sorted(NUMERICAL))})\."
    r"|Login\.Keys\.(ProtocolLevel|NumberEncodings|Malformed)\."
    r"|Login\.Keys\.Answers\.EveryKeyAnswered$"
    r"|Login\.Connections\.)"
)
#: What a failure message must say, by mode (the empty Discovery answers show themselves).
WORDS = {
    "hangup": ("closed the connection",),
    "silent": ("nothing within",),
    "empty": ("never answered", "answers a key offered to it"),
}
CAUGHT = {"failed", "non-strict", "informational"}  # a failure, whatever its grade


def _rewrite(mode: str) -> Any:
    def rewrite(conn: ObservedConnection, direction: str, pdu: P.PDU) -> Any:
        if direction != "t->i":
            return pdu
        if mode in ("hangup", "silent"):
            refusal = isinstance(pdu, P.LoginResponse) and pdu.status_class
            if refusal or isinstance(pdu, P.TextResponse | P.Reject):
                conn.hang_up() if mode == "hangup" else conn.mute()
                return None
            return pdu
        if isinstance(pdu, P.TextResponse) and pdu.data:
            return dataclasses.replace(pdu, data=b"")
        if isinstance(pdu, P.LoginResponse) and pdu.status_class == 0 and pdu.data:
            offered = {k for k, _ in conn.initiator_keys}
            kept = [
                kv for kv in parse_pairs(pdu.data) if not (kv[0] in NUMERICAL and kv[0] in offered)
            ]
            return dataclasses.replace(pdu, data=format_pairs(kept, strict=False) if kept else b"")
        return pdu

    return rewrite if mode != "plain" else None


def _certify(mode: str, suites: tuple[str, ...], chap: bool, out: Path) -> dict[str, Any]:
    """``certify`` the areas ``suites`` through a proxy in ``mode``; results by test ID."""
    config = simple_config(("127.0.0.1", 0), IQN, ["16M"])
    if chap:
        target = dataclasses.replace(config.targets[0], chap=ChapConfig(USER, SECRET))
        config = dataclasses.replace(config, targets=[target])
    server = TargetServer(config)
    server.start_in_thread()
    observer = Observer(*server.portal(), rewrite=_rewrite(mode), label=mode)
    host, port = observer.start()
    cred = f"{USER}%{SECRET}@" if chap else ""
    timeout = SILENT_TIMEOUT if mode == "silent" else ANSWER_TIMEOUT
    env = {
        **os.environ,
        "ISCSI_CONFORMANCE_ANSWER_TIMEOUT": timeout,
        # Half of a short run's CPU is pytest rewriting asserts and the hypothesis plugin
        # importing hypothesis; conformance tests fail through require(), not assert.
        "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} {FAST_PYTEST}".strip(),
    }
    suite_args = [arg for s in suites for arg in ("--suite", s)]
    try:
        subprocess.run(
            [sys.executable, "-m", "iscsi_conformance.cli", "certify", "-q",
             f"iscsi://{cred}{host}:{port}/{IQN}/0", *suite_args, "--report", str(out)],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        observer.stop()
        server.stop_thread()
    tests = json.loads((out / "results.json").read_text())["tests"]
    return {t["id"]: t for t in tests}


def _saw_a_refusal(test: dict[str, Any]) -> bool:
    pdus = (test.get("evidence") or {}).get("pdus", [])
    return any(
        p.get("opcode") == "LoginResponse" and "status_class=" in p.get("summary", "") for p in pdus
    )


#: The runs: (name, mode, suites, chap). Login, Naming and Discovery share a run per
#: mode; CHAP needs a target that requires it. The silent run, the longest, is split in
#: two; a prefix missing from both halves leaves its tests without a result, and then
#: they count as not caught.
ANSWERS = ("Login", "Naming", "Discovery")
SILENT_HALVES = (
    ("Login.Keys", "Login.Connections"),
    ("Login.Stages", "Login.Versions", "Login.Session", "Login.Continuation",
     "Login.TextLimits", "Login.Redirect", "Naming", "Discovery"),
)  # fmt: skip
RUNS = [
    ("plain", "plain", ANSWERS, False),
    ("hangup", "hangup", ANSWERS, False),
    *((f"silent-{n}", "silent", half, False) for n, half in enumerate(SILENT_HALVES)),
    ("empty", "empty", ("Login.Keys", "Login.Connections", "Discovery"), False),
    ("chap-plain", "plain", ("CHAP",), True),
    ("chap-hangup", "hangup", ("CHAP",), True),
    ("chap-silent", "silent", ("CHAP",), True),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every run, side by side: they wait far more than they compute."""
    root = tmp_path_factory.mktemp("no-answer")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(RUNS)) as pool:
        futures = {
            name: pool.submit(_certify, mode, suites, chap, root / name)
            for name, mode, suites, chap in RUNS
        }
        done = {name: f.result() for name, f in futures.items()}
    halves = [done.pop(f"silent-{n}") for n in range(len(SILENT_HALVES))]
    done["silent"] = {k: v for half in halves for k, v in half.items()}
    return done


def _must_catch(plain: dict[str, Any], mode: str) -> set[str]:
    """The tests that passed against the plain target and must fail against ``mode``."""
    passed = {i for i, t in plain.items() if t["outcome"] == "passed"}
    if mode == "empty":
        return {i for i in passed if NEEDS_CONTENT.match(i)}
    answered = {i for i in passed if _saw_a_refusal(plain[i]) or i.startswith("Discovery.")}
    answered = answered - SILENCE_ONLY if mode == "hangup" else answered | (passed & SILENCE_ONLY)
    return answered - ANY_OUTCOME_BUT_ONE


@pytest.mark.parametrize(
    ("plain", "mode", "proxied"),
    [
        ("plain", "hangup", "hangup"),
        ("plain", "silent", "silent"),
        ("plain", "empty", "empty"),
        ("chap-plain", "hangup", "chap-hangup"),
        ("chap-plain", "silent", "chap-silent"),
    ],
)
def test_no_answer_never_passes(
    runs: dict[str, dict[str, Any]], plain: str, mode: str, proxied: str
) -> None:
    expected = _must_catch(runs[plain], mode)
    assert expected, f"no test of {plain!r} needs what the {mode} proxy takes away"
    results = runs[proxied]
    still = sorted(i for i in expected if results.get(i, {}).get("outcome") not in CAUGHT)
    assert not still, f"{proxied}: these tests passed without the answer they need: {still}"
    unclear = sorted(
        i
        for i in expected
        if not i.startswith("Discovery.") or mode != "empty"
        if not any(w in results[i].get("message", "") for w in WORDS[mode])
    )
    said = {i: results[i].get("message", "")[:300] for i in unclear}
    assert not unclear, f"{proxied}: the failure does not say what happened: {said}"


def test_the_runs_cover_every_area(runs: dict[str, dict[str, Any]]) -> None:
    """Each proof above looked at the areas it claims: Login, Naming, Discovery and CHAP
    each have tests that must catch a missing answer."""
    caught = set().union(
        *(_must_catch(runs[p], m) for p, m in (("plain", "silent"), ("chap-plain", "silent")))
    )
    for area in ("Login.", "Naming.", "Discovery.", "CHAP."):
        assert any(i.startswith(area) for i in caught), f"no {area[:-1]} test is checked"
