"""Initiator.Recovery.Erl2: an initiator at ErrorRecoveryLevel 2 whose connection fails
with a WRITE outstanding (RFC 7143 7.2.2, 6.3.4, 11.14.1, 11.5.1, 13.15, 13.16).

The run's reference target serves profile "erl2": it agrees to ErrorRecoveryLevel 2
(MaxConnections 2, DefaultTime2Wait 1, DefaultTime2Retain 20) and solicits every byte
of a write by R2T. The proxy holds the first R2T of the WRITE back, and the reference
target then drops the connection itself: an Async Message 'connection drop' (event 2,
RFC 7143 11.9.1) names the CID, Time2Wait (Parameter2) and Time2Retain (Parameter3),
and the connection closes. The target keeps the task for TASK REASSIGN; the initiator
has a task with no connection.

What the RFC asks of the initiator, and how each part is graded:

- MUST (7.2.2): before it reassigns a task, the failed connection is logged out, by a
  Logout with reason 2 ('remove the connection for recovery') naming its CID, or
  implicitly by a login with that CID into the same session (6.3.4). A TASK REASSIGN
  sent before either is a failure.
- INFORMATIONAL: that it recovers at all (7.2.2 calls TASK REASSIGN the initiator's
  intent; it may as well end the session), that it waits the message's Time2Wait
  first (11.9.1, 13.15 and 11.15.3 describe the wait without a keyword on the
  initiator) and that the WRITE then ends GOOD with its data read back. Waiting is checked only when recovery
  happens, and a missing recovery is reported, not failed.

An initiator that does not offer ErrorRecoveryLevel=2, or cannot be told to, gets less
(the result function is Minimum, 13.20): its right, so the test skips, naming what it
offered, before any I/O.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from iscsi_conformance.core.pdu import (
    R2T,
    AsyncMessage,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    ScsiCommand,
    TaskManagementRequest,
)
from iscsi_conformance.errors import ConfigError, ISCSIConformanceError
from iscsi_conformance.harness.observer import ObservedConnection, Observer
from iscsi_conformance.peers.base import LoginOptions
from iscsi_conformance.plugin import require, spec, violation

PROFILE = "erl2"
LUN = 0
LBA = 12288
BLOCK = 512
BLOCKS = 32  # 16 KiB: one R2T at MaxBurstLength 16384
OFFER = (
    ("ErrorRecoveryLevel", "2"),
    ("MaxConnections", "2"),
    ("DefaultTime2Wait", "1"),
    ("DefaultTime2Retain", "20"),
)
TASK_REASSIGN = 8
REMOVE_FOR_RECOVERY = 2
SLACK = 0.05  # clock granularity between the proxy's timestamps
DROP_TIME2WAIT = 1  # Parameter2 of the target's 'connection drop'


class _HoldFirstR2T:
    """Rewrite hook: the first R2T of a Normal session is not passed on (the WRITE
    stays outstanding); everything else passes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = threading.Event()
        self.cut: tuple[ObservedConnection, float, R2T] | None = None

    def __call__(self, conn: ObservedConnection, direction: str, pdu: Any) -> Any:
        if direction != "t->i" or not isinstance(pdu, R2T) or conn.session_type != "Normal":
            return pdu
        with self.lock:
            if self.cut is not None:
                return pdu
            self.cut = (conn, time.monotonic(), pdu)
        self.held.set()
        return None


def _login(initiator: Any, target: Any, ep: Any) -> Any:
    chap, mutual = target.chap_for(PROFILE)
    try:
        return initiator.driver.login(ep, options=LoginOptions(chap=chap, mutual_chap=mutual,
                                                               parameters=OFFER))  # fmt: skip
    except ConfigError:
        # The driver cannot set the keys: the initiator offers what it offers (judged below).
        return initiator.driver.login(ep, options=LoginOptions(chap=chap, mutual_chap=mutual))


def _normal(obs: Observer) -> list[ObservedConnection]:
    return [c for c in obs if c.session_type == "Normal" and c.in_full_feature]


def _settle(obs: Observer) -> None:
    obs.wait_closed(3.0)
    obs.wait_quiet(0.05, 1.0)
    if obs.harness_errors:
        raise violation("harness", f"the recording proxy failed: {obs.harness_errors}")


def _isid_tsih(conn: ObservedConnection) -> tuple[int, int]:
    reqs = [e.pdu for e in conn.sent_by_initiator(LoginRequest)]
    answered = [e.pdu for e in conn.seen_by_initiator(LoginResponse)]
    tsih = answered[-1].tsih if answered else 0  # type: ignore[union-attr]
    return reqs[0].isid, tsih  # type: ignore[union-attr]


@spec(
    "Initiator.Recovery.Erl2.WriteContinued",
    "RFC 7143 7.2.2",
    ("RFC 7143", "11.9.1", "INFORMATIONAL", "initiator"),
    ("RFC 7143", "13.15", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-7.2.2-2", "R7143-7.2.2-3"],
    dataloss=True,
)
def test_write_continued_after_connection_failure(
    initiator: Any, target: Any, observed: Any
) -> None:
    """A WRITE whose connection the target drops (Async event 2) while it waits for
    its R2T: any TASK REASSIGN comes only after the failed connection was logged out
    (explicitly or implicitly); the initiator waits the message's Time2Wait,
    reassigns, and the WRITE ends GOOD with its data."""
    cutter = _HoldFirstR2T()
    ep, obs = observed(PROFILE, cutter)
    payload = os.urandom(BLOCKS * BLOCK)
    handle = _login(initiator, target, ep)
    error: ISCSIConformanceError | None = None
    data = b""
    try:
        obs.wait_for(lambda: bool(_normal(obs)), 5.0)
        if not _normal(obs):
            raise violation("harness", "the login never reached full feature phase via the proxy")
        first = _normal(obs)[0]
        agreed = first.negotiated("ErrorRecoveryLevel", "0")
        if agreed != "2":
            offer = first.declared_by_initiator("ErrorRecoveryLevel") or "nothing (default 0)"
            pytest.skip(
                f"{initiator.name} offered ErrorRecoveryLevel={offer} and negotiated {agreed} "
                "(result function Minimum, RFC 7143 13.20): no connection recovery agreed"
            )
        outcome: dict[str, Any] = {}

        def write() -> None:
            try:
                initiator.driver.write(handle, LUN, LBA, payload)
            except ISCSIConformanceError as exc:
                outcome["error"] = exc

        writer = threading.Thread(target=write, name="erl2-write", daemon=True)
        writer.start()
        if not cutter.held.wait(10.0):
            writer.join(5.0)
            raise violation("harness", "the WRITE got no R2T through the proxy: nothing was held")
        held_conn = cutter.cut[0] if cutter.cut else first
        cid = next(e.pdu.cid for e in held_conn.sent_by_initiator(LoginRequest))  # type: ignore[union-attr]
        target.send_async(
            _isid_tsih(held_conn)[1], 2, cid=cid, time2wait=DROP_TIME2WAIT, time2retain=20
        )
        writer.join(DROP_TIME2WAIT + 15.0)
        error = outcome.get("error")
        if writer.is_alive():
            error = ISCSIConformanceError("the WRITE was still waiting 15 s after the drop")
        elif error is None:
            try:
                data = initiator.driver.read(handle, LUN, LBA, BLOCKS)
            except ISCSIConformanceError as exc:
                error = exc
    finally:
        try:
            initiator.driver.logout(handle)
        except ISCSIConformanceError:
            pass  # a session ended by a failed recovery has nothing to log out
    _settle(obs)
    assert cutter.cut is not None
    failed, _, r2t = cutter.cut
    drops = failed.seen_by_initiator(AsyncMessage)
    if not drops:
        raise violation("harness", "the reference target's 'connection drop' never came")
    cut_at = drops[0].time
    time2wait = float(drops[0].pdu.parameter2)  # type: ignore[union-attr]
    failed_cid = next(e.pdu.cid for e in failed.sent_by_initiator(LoginRequest))  # type: ignore[union-attr]
    isid, tsih = _isid_tsih(failed)
    write_itt = r2t.itt
    later = [c for c in obs if c.index > failed.index]
    # Every PDU the initiator sent after the cut, in time order, with its connection.
    sent = sorted(
        ((e.time, c, e.pdu) for c in later for e in c.sent_by_initiator() if e.pdu is not None),
        key=lambda x: x[0],
    )
    answers = {
        (c.index, e.pdu.itt): e.pdu  # type: ignore[union-attr]
        for c in later
        for e in c.seen_by_initiator(LogoutResponse)
    }
    logged_out_at: float | None = None
    first_login_at: float | None = None
    for t, conn, pdu in sent:
        if isinstance(pdu, LoginRequest) and pdu.isid == isid and pdu.tsih == tsih:
            first_login_at = t if first_login_at is None else first_login_at
            if pdu.cid == failed_cid and logged_out_at is None:
                logged_out_at = t  # implicit logout by the same CID (6.3.4)
        elif (
            isinstance(pdu, LogoutRequest)
            and (pdu.reason & 0x7F) == REMOVE_FOR_RECOVERY
            and pdu.cid == failed_cid
        ):
            resp = answers.get((conn.index, pdu.itt))
            if resp is not None and resp.response in (0, 1) and logged_out_at is None:
                logged_out_at = t  # 1: the CID was already gone, which the logout asks
        elif (
            isinstance(pdu, TaskManagementRequest)
            and (pdu.function & 0x7F) == TASK_REASSIGN
            and pdu.referenced_task_tag == write_itt
        ):
            require(
                logged_out_at is not None,
                "R7143-7.2.2-2",
                f"TASK REASSIGN of the WRITE (ITT {write_itt:#x}) was sent before the failed "
                f"connection (CID {failed_cid}) was logged out: no Logout 'remove the "
                "connection for recovery' for it was answered, and no login reused its CID",
                sent=[p for _, _, p in sent][:8],
            )
    reassigned = [
        p
        for _, _, p in sent
        if isinstance(p, TaskManagementRequest) and (p.function & 0x7F) == TASK_REASSIGN
    ]
    resent = [p for _, _, p in sent if isinstance(p, ScsiCommand) and p.write]
    if not reassigned:
        how = (
            "re-issued the WRITE as a new command"
            if resent
            else f"ended with {error}"
            if error
            else "did nothing visible"
        )
        require(
            False,
            "R7143-7.2.2-3",
            f"{initiator.name} agreed to ErrorRecoveryLevel 2 but, when the connection failed "
            f"under its WRITE, did not reassign the task: it {how}",
            sent=[p for _, _, p in sent][:8],
        )
    waited = (first_login_at - cut_at) if first_login_at is not None else None
    require(
        waited is not None and waited >= time2wait - SLACK,
        "R7143-7.2.2-3",
        f"{initiator.name} logged in again for recovery {waited:.2f} s after the target's "
        f"'connection drop', before its Time2Wait ({time2wait:g} s, RFC 7143 11.9.1)"
        if waited is not None
        else f"{initiator.name} reassigned the task without a new login",
    )
    require(
        error is None and data == payload,
        "R7143-7.2.2-3",
        f"{initiator.name} reassigned the WRITE, but "
        + (f"the I/O failed: {error}" if error else "the data read back differ from those written"),
    )
