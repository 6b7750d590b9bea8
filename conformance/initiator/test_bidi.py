"""Initiator.Bidi: a bidirectional command as an initiator sends it (RFC 7143 11.3.4).

The run's reference target implements XDWRITEREAD(10) and answers its read part as
Data-In numbered on from the R2Ts (one sequence, 4.2.2.4), the status in a SCSI Response.
Behind the recording proxy, the initiator writes a block pattern, then sends
XDWRITEREAD(10) with another: its SCSI Command must carry R and W, the write length in
the Expected Data Transfer Length and the read length in a Bidirectional Read Expected
Data Transfer Length AHS (11.3.4, MUST), and what it returns must be the XOR of the two
patterns (its Data-In placed by Buffer Offset, the shared numbering accepted).

Only initiators whose manifest says ``bidirectional`` run it: libiscsi has one transfer
direction per task, and Linux (open-iscsi) dropped bidirectional SCSI commands, as their
manifests record.
"""

from __future__ import annotations

import os
from typing import Any

from iscsi_conformance.core.pdu import ScsiCommand
from iscsi_conformance.errors import ISCSIConformanceError
from iscsi_conformance.harness.observer import Observer
from iscsi_conformance.peers.base import LoginOptions
from iscsi_conformance.plugin import require, spec, violation

PROFILE = "default"
LUN = 0
LBA = 12288
BLOCK = 512
BLOCKS = 32  # 16 KiB: more than one R2T or Data-In at the usual 8 KiB segments
XDWRITEREAD_10 = 0x53


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _commands(obs: Observer) -> list[ScsiCommand]:
    obs.wait_closed(3.0)
    obs.wait_quiet(0.05, 1.0)
    if obs.harness_errors:
        raise violation("harness", f"the recording proxy failed: {obs.harness_errors}")
    return [
        e.pdu  # type: ignore[misc]
        for c in obs
        if c.session_type == "Normal"
        for e in c.sent_by_initiator(ScsiCommand)
        if e.pdu.cdb[:1] == bytes([XDWRITEREAD_10])  # type: ignore[union-attr]
    ]


@spec(
    "Initiator.Bidi.XdWriteRead",
    "RFC 7143 11.3.4",
    "RFC 7143 11.2.2.4",
    pairing="initiator",
    requirements=["R7143-11.3.4-1"],
    needs=("initiator:bidirectional",),
)
def test_bidirectional_command(initiator: Any, target: Any, observed: Any) -> None:
    """A bidirectional XDWRITEREAD(10) goes out with R, W, EDTL the write length and the
    Bidirectional Read AHS, and returns the XOR of the two patterns."""
    ep, obs = observed(PROFILE)
    chap, mutual = target.chap_for(PROFILE)
    old, new = os.urandom(BLOCKS * BLOCK), os.urandom(BLOCKS * BLOCK)
    handle = initiator.driver.login(ep, options=LoginOptions(chap=chap, mutual_chap=mutual))
    error: ISCSIConformanceError | None = None
    data = b""
    try:
        initiator.driver.write(handle, LUN, LBA, old)
        try:
            data = initiator.driver.xdwriteread(handle, LUN, LBA, new)
        except ISCSIConformanceError as exc:
            error = exc
    finally:
        initiator.driver.logout(handle)
    sent = _commands(obs)
    if not sent:
        raise violation("harness", f"{initiator.name} sent no XDWRITEREAD(10) through the proxy")
    cmd = sent[-1]
    require(
        cmd.read
        and cmd.write
        and cmd.expected_data_transfer_length == len(new)
        and cmd.bidi_read_length == len(new),
        "R7143-11.3.4-1",
        f"{initiator.name}'s XDWRITEREAD(10) of {len(new)} bytes each way went out with "
        f"R={int(cmd.read)} W={int(cmd.write)}, EDTL {cmd.expected_data_transfer_length}, "
        + (
            "no Bidirectional Read AHS"
            if cmd.bidi_read_length is None
            else f"Bidirectional Read EDTL {cmd.bidi_read_length}"
        ),
        sent=[cmd],
    )
    require(
        error is None and data == _xor(old, new),
        "R7143-11.3.4-1",
        f"{initiator.name}'s XDWRITEREAD(10) "
        + (f"failed: {error}" if error is not None else f"returned {len(data)} bytes, not the XOR"),
        sent=[cmd],
    )
