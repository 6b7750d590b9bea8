"""Initiator.Recovery.Erl1.DataAck: an initiator at ErrorRecoveryLevel 1 or higher
answers the A bit of a Data-In with a DataACK (RFC 7143 11.16.2, 11.7.2).

The run's reference target serves profile "erl2": it agrees to ErrorRecoveryLevel
up to 2 (Minimum, 13.20) and MaxBurstLength 16384, and at ErrorRecoveryLevel >= 1 it
sets the A bit, with a Target Transfer Tag, on the last Data-In of each MaxBurstLength
sequence that does not carry the status. The test offers ErrorRecoveryLevel=1 and
reads 64 KiB (four sequences, so three A bits) through the recording proxy.

What the RFC asks of the initiator (MUST, 11.16.2 and 11.7.2), per A-bit Data-In:
a SNACK of type DataACK (2) with ITT 0xffffffff (11.16.4), that Data-In's Target
Transfer Tag and LUN (11.16.5), BegRun its DataSN + 1 (11.16.6) and RunLength 0
(11.16.7), sent before the initiator acknowledges the task's status through ExpStatSN
(only a status carried by the A-bit Data-In itself makes the DataACK optional, and
none of these does).

An initiator that does not offer ErrorRecoveryLevel >= 1, or cannot be told to, gets 0
(the manifest capability ``erl``): the A bit is then never set, and the test skips,
naming what it offered and its declared capability, before any I/O.
"""

from __future__ import annotations

from typing import Any

import pytest

from iscsi_conformance.core import serial
from iscsi_conformance.core.pdu import PDU, ScsiCommand, ScsiDataIn, ScsiResponse, SnackRequest
from iscsi_conformance.errors import ConfigError, ISCSIConformanceError
from iscsi_conformance.harness.observer import ObservedConnection, Observer
from iscsi_conformance.peers.base import LoginOptions
from iscsi_conformance.plugin import require, spec, violation

PROFILE = "erl2"
ROW = "R7143-11.16-11"
LUN = 0
LBA = 20480
BLOCK = 512
BLOCKS = 128  # 64 KiB: four 16 KiB sequences at MaxBurstLength 16384
OFFER = (("ErrorRecoveryLevel", "1"),)
NONE_TAG = 0xFFFFFFFF
DATA_ACK = 2


def _login(initiator: Any, target: Any, ep: Any) -> Any:
    chap, mutual = target.chap_for(PROFILE)
    try:
        return initiator.driver.login(ep, options=LoginOptions(chap=chap, mutual_chap=mutual,
                                                               parameters=OFFER))  # fmt: skip
    except ConfigError:
        # The driver cannot set the key: the initiator offers what it offers (judged below).
        return initiator.driver.login(ep, options=LoginOptions(chap=chap, mutual_chap=mutual))


def _normal(obs: Observer) -> list[ObservedConnection]:
    return [c for c in obs if c.session_type == "Normal" and c.in_full_feature]


def _show(p: PDU) -> str:
    if isinstance(p, ScsiDataIn):
        return (
            f"Data-In DataSN {p.datasn} A={int(p.ack)} S={int(p.status_present)} "
            f"TTT {p.ttt:#x} offset {p.buffer_offset} len {len(p.data)}"
        )
    if isinstance(p, SnackRequest):
        return (
            f"SNACK type {p.snack_type} ITT {p.itt:#x} TTT {p.ttt:#x} BegRun {p.begrun} "
            f"RunLength {p.runlength} ExpStatSN {p.expstatsn}"
        )
    return f"{type(p).__name__} ExpStatSN {getattr(p, 'expstatsn', '-')}"


@spec(
    "Initiator.Recovery.Erl1.DataAck",
    "RFC 7143 11.16.2",
    "RFC 7143 11.7.2",
    pairing="initiator",
    requirements=[ROW],
)
def test_data_ack_for_each_a_bit(initiator: Any, target: Any, observed: Any) -> None:
    """At ErrorRecoveryLevel 1, a 64 KiB READ in 16 KiB sequences: each Data-In with
    the A bit gets a DataACK with its TTT and BegRun DataSN + 1, before the status is
    acknowledged."""
    ep, obs = observed(PROFILE)
    handle = _login(initiator, target, ep)
    error: ISCSIConformanceError | None = None
    try:
        obs.wait_for(lambda: bool(_normal(obs)), 5.0)
        if not _normal(obs):
            raise violation("harness", "the login never reached full feature phase via the proxy")
        agreed = _normal(obs)[-1].negotiated("ErrorRecoveryLevel", "0")
        if agreed == "0":
            offer = _normal(obs)[-1].declared_by_initiator("ErrorRecoveryLevel")
            pytest.skip(
                f"{initiator.name} offered ErrorRecoveryLevel={offer or 'nothing (default 0)'} "
                f"and negotiated 0 (manifest capability erl = "
                f"{initiator.manifest.capabilities.get('erl', [0])}): no A bit at ERL 0 "
                "(RFC 7143 11.7.2)"
            )
        try:
            initiator.driver.read(handle, LUN, LBA, BLOCKS)
        except ISCSIConformanceError as exc:
            error = exc
    finally:
        initiator.driver.logout(handle)
    obs.wait_closed(3.0)
    obs.wait_quiet(0.05, 1.0)
    if obs.harness_errors:
        raise violation("harness", f"the recording proxy failed: {obs.harness_errors}")
    conn = _normal(obs)[-1]
    _judge(initiator.name, conn, error)


def _judge(name: str, conn: ObservedConnection, error: ISCSIConformanceError | None) -> None:
    seq = [e.pdu for e in conn.delivered() if e.pdu is not None and e.full_feature]
    reads = [p for p in seq if isinstance(p, ScsiCommand) and p.read]
    if not reads:
        raise violation("harness", "the initiator sent no READ through the proxy")
    itt = reads[-1].itt
    data_in = [p for p in seq if isinstance(p, ScsiDataIn) and p.itt == itt]
    marked = [p for p in data_in if p.ack]
    if not marked:
        raise violation(
            "harness",
            "the target set no A bit in the READ's Data-In ("
            + "; ".join(_show(p) for p in data_in)
            + "): nothing was exercised",
        )
    if error is not None:
        raise violation(ROW, f"{name} failed the READ with the A bit set: {error}")
    status = next((p for p in data_in if p.status_present), None)
    statsn = status.statsn if status is not None else None
    if statsn is None:
        statsn = next((p.statsn for p in seq if isinstance(p, ScsiResponse) and p.itt == itt), None)
    # the first initiator PDU after the READ whose ExpStatSN acknowledges its status
    start = seq.index(reads[-1])
    acked_at = next(
        (
            i
            for i, p in enumerate(seq)
            if i > start
            and p.is_request
            and statsn is not None
            and not (isinstance(p, SnackRequest) and p.snack_type == DATA_ACK)
            and serial.gt(getattr(p, "expstatsn", statsn), statsn)
        ),
        len(seq),
    )
    acks = [
        (i, p)
        for i, p in enumerate(seq)
        if isinstance(p, SnackRequest) and p.snack_type == DATA_ACK
    ]
    shown = "; ".join(_show(p) for p in seq[start:])
    for d in marked:
        if d.status_present:
            continue  # 11.7.2: optional when the status came with it
        want = (d.datasn + 1) % 2**32
        mine = [(i, p) for i, p in acks if p.ttt == d.ttt and p.begrun == want]
        require(
            bool(mine),
            ROW,
            f"{name} sent no DataACK (SNACK type 2, TTT {d.ttt:#x}, BegRun {want}) for the "
            f"A bit on Data-In DataSN {d.datasn} (ErrorRecoveryLevel >= 1): {shown}",
        )
        i, p = mine[0]
        require(
            i < acked_at,
            ROW,
            f"{name} acknowledged the READ's status (StatSN {statsn}) through ExpStatSN "
            f"before its DataACK for DataSN {d.datasn}: {shown}",
        )
        require(
            p.itt == NONE_TAG and p.runlength == 0 and p.lun == d.lun,
            ROW,
            f"{name}'s DataACK for DataSN {d.datasn} has ITT {p.itt:#x} (0xffffffff, "
            f"11.16.4), RunLength {p.runlength} (0, 11.16.7), LUN {p.lun:#x} (the "
            f"Data-In's {d.lun:#x}, 11.16.5): {shown}",
        )
