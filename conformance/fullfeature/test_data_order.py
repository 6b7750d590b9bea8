"""FullFeature.DataOut with DataPDUInOrder=No: the data PDUs of a sequence in any order
(RFC 7143 13.18).

DataPDUInOrder has the OR result function: a target that wants data PDUs at
continuously increasing offsets answers Yes, and that is its right; the test then
skips. A target that agrees to No has said the data PDUs within a sequence can come in
any order, and every key it negotiates it must support (11.12.10): the test sends each
R2T's Data-Out PDUs in reverse offset order (DataSN in sending order, F on the last one
sent) and requires GOOD and the data read back. Where the target offers a dedicated
instance (the reference target), that instance is configured to agree to No.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.probe import FullFeature, full_feature
from iscsi_conformance.harness.profiles import capability_satisfied
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

BLOCK = 512
BLOCKS = 64  # 32 KiB: several Data-Out PDUs per R2T at the usual 8 KiB segment length
LBA = 256  # inside the 1 MiB logical unit of a dedicated instance
SEGMENT = 4096  # the Data-Out size we send (at most the target's MaxRecvDataSegmentLength)
KEYS = [
    ("DataPDUInOrder", "No"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "No"),
    ("MaxBurstLength", "262144"),
]


@contextlib.asynccontextmanager
async def _session(
    target: Any, keys: list[tuple[str, str]], parameters: tuple[tuple[str, str], ...]
) -> AsyncIterator[tuple[Any, FullFeature]]:
    """A session offering ``keys``, on a dedicated instance configured with
    ``parameters`` where the target offers one, else on the target itself."""
    with contextlib.ExitStack() as stack:
        if not target.external and capability_satisfied(target.manifest, "dedicated_instance"):
            lu = stack.enter_context(target.dedicated(parameters=parameters))
        else:
            lu = target
        async with full_feature(lu, keys=keys) as ffp:
            yield lu, ffp


def _reversed_sequence(ffp: FullFeature, cmd: Any, r2t: Any, payload: bytes) -> list[Any]:
    """The R2T's Data-Out PDUs, highest offset first: DataSN counts them in the order
    they are sent and F marks the last one sent (13.18: any order within a sequence)."""
    start, length = r2t.buffer_offset, r2t.desired_data_transfer_length
    pdus = P.data_out_pdus(
        payload[start : start + length],
        start,
        min(SEGMENT, ffp.target_mrdsl),
        itt=cmd.itt,
        ttt=r2t.ttt,
        lun=cmd.lun,
        expstatsn=ffp.expstatsn,
    )
    pdus.reverse()
    return [dataclasses.replace(p, datasn=i, final=i == len(pdus) - 1) for i, p in enumerate(pdus)]


async def _require_good_and_read_back(
    ffp: Any,
    lu: Any,
    payload: bytes,
    response: Any,
    sent: list[Any],
    seen: list[Any],
    row: str,
    write: str,
    data: str,
) -> None:
    """The end both tests share: the reordered WRITE ended GOOD (``write`` says how it
    was sent) and its data read back as sent (``data`` names them), both under ``row``."""
    require(
        response is not None and response.status == 0,
        row,
        f"{write} did not end GOOD: "
        + (f"status {response.status:#04x}" if response is not None else str(ffp.no_answer)),
        sent=sent,
        received=ffp.shown(*seen, None) if response is None else seen,
    )
    back = await ffp.command(cdb.read10(LBA, BLOCKS), lun=lu.lun, read_length=len(payload))
    require(
        back.status == 0 and back.data == payload,
        row,
        f"{data} does not read back as sent (status {back.status}, {len(back.data)} bytes)",
        sent=[back.command],
        received=back.shown(),
    )


@spec(
    "FullFeature.DataOut.PdusInAnyOrder",
    "RFC 7143 13.18",
    requirements=["R7143-13.18-2"],
    dataloss=True,
)
async def test_data_out_pdus_in_any_order(target: Any) -> None:
    """With DataPDUInOrder=No agreed, a WRITE whose Data-Out PDUs come in reverse offset
    order within each sequence ends GOOD, and the data reads back as sent."""
    async with _session(target, KEYS, (("DataPDUInOrder", "No"),)) as (lu, ffp):
        agreed = ffp.probe.negotiated.get("DataPDUInOrder", "Yes")
        if agreed != "No":
            pytest.skip(f"the target answered DataPDUInOrder={agreed} (OR: in-order data)")
        payload = os.urandom(BLOCKS * BLOCK)
        cmd, r2t, got = await ffp.hold_write(lu.lun, cdb.write10(LBA, BLOCKS), len(payload))
        if r2t is None:
            raise violation(
                "harness",
                "the WRITE under InitialR2T=Yes, ImmediateData=No got no R2T",
                sent=[cmd],
                received=ffp.shown(*got, None),
            )
        sent: list[Any] = [cmd]
        seen: list[Any] = [*got]
        reordered = 0
        response = None
        for _ in range(64):
            if r2t is not None:
                pdus = _reversed_sequence(ffp, cmd, r2t, payload)
                reordered += len(pdus) > 1
                for pdu in pdus:
                    await ffp.send(pdu)
                sent += pdus
                r2t = None
            p = await ffp.recv(timeout=5.0)
            if p is None:
                break
            seen.append(p)
            if isinstance(p, P.R2T) and p.itt == cmd.itt:
                r2t = p
            elif isinstance(p, P.ScsiResponse) and p.itt == cmd.itt:
                response = p
                break
        if not reordered:
            raise violation(
                "harness",
                f"no R2T asked for more than one Data-Out PDU of {SEGMENT} bytes at most: "
                "nothing could be sent out of order",
                sent=sent,
                received=seen,
            )
        await _require_good_and_read_back(
            ffp, lu, payload, response, sent, seen, "R7143-13.18-2",
            "with DataPDUInOrder=No agreed, the WRITE whose Data-Out PDUs came in reverse "
            "offset order",
            "the data written with Data-Out PDUs in reverse order",
        )  # fmt: skip


SEQUENCE_KEYS = [
    ("DataSequenceInOrder", "No"),
    ("MaxOutstandingR2T", "4"),
    ("MaxBurstLength", "8192"),
    ("FirstBurstLength", "8192"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "No"),
]


@spec(
    "FullFeature.DataOut.SequencesInAnyOrder",
    "RFC 7143 13.19",
    "RFC 7143 13.17",
    requirements=["R7143-13.19-3"],
    dataloss=True,
)
async def test_data_out_sequences_in_any_order(target: Any) -> None:
    """With DataSequenceInOrder=No and several R2Ts outstanding, a WRITE whose Data-Out
    sequences answer the R2Ts newest first ends GOOD, and the data reads back as sent."""
    params = (("DataSequenceInOrder", "No"), ("MaxOutstandingR2T", "4"))
    async with _session(target, SEQUENCE_KEYS, params) as (lu, ffp):
        n = ffp.probe.negotiated
        if n.get("DataSequenceInOrder", "Yes") != "No":
            pytest.skip(
                f"the target answered DataSequenceInOrder={n.get('DataSequenceInOrder')} "
                "(OR: sequences in order)"
            )
        if int(n.get("MaxOutstandingR2T", "1")) < 2:
            pytest.skip("MaxOutstandingR2T=1: one R2T at a time, no sequences to reorder")
        payload = os.urandom(BLOCKS * BLOCK)
        cmd, first, got = await ffp.hold_write(lu.lun, cdb.write10(LBA, BLOCKS), len(payload))
        if first is None:
            raise violation(
                "harness",
                "the WRITE under InitialR2T=Yes, ImmediateData=No got no R2T",
                sent=[cmd],
                received=ffp.shown(*got, None),
            )
        r2ts = [first]
        seen: list[Any] = [*got]
        for _ in range(8):  # the other R2Ts the target has outstanding at once
            p = await ffp.recv(timeout=1.0)
            if p is None:
                break
            seen.append(p)
            if isinstance(p, P.R2T) and p.itt == cmd.itt:
                r2ts.append(p)
        if len(r2ts) < 2:
            raise violation(
                "harness",
                f"MaxOutstandingR2T={n.get('MaxOutstandingR2T')} agreed, yet one R2T at a "
                "time came: no sequences to send out of order",
                sent=[cmd],
                received=seen,
            )
        sent: list[Any] = [cmd]
        response = None
        pending = list(reversed(r2ts))  # the newest R2T's sequence first
        for _ in range(64):
            for r2t in pending:
                pdus = P.data_out_pdus(
                    payload[
                        r2t.buffer_offset : r2t.buffer_offset + r2t.desired_data_transfer_length
                    ],
                    r2t.buffer_offset,
                    min(SEGMENT, ffp.target_mrdsl),
                    itt=cmd.itt,
                    ttt=r2t.ttt,
                    lun=cmd.lun,
                    expstatsn=ffp.expstatsn,
                )
                for pdu in pdus:
                    await ffp.send(pdu)
                sent += pdus
            pending = []
            p = await ffp.recv(timeout=5.0)
            if p is None:
                break
            seen.append(p)
            if isinstance(p, P.R2T) and p.itt == cmd.itt:
                pending = [p]
            elif isinstance(p, P.ScsiResponse) and p.itt == cmd.itt:
                response = p
                break
        await _require_good_and_read_back(
            ffp, lu, payload, response, sent, seen, "R7143-13.19-3",
            "with DataSequenceInOrder=No agreed, the WRITE whose Data-Out sequences answered "
            f"its {len(r2ts)} outstanding R2Ts newest first",
            "the data written with Data-Out sequences out of order",
        )  # fmt: skip
