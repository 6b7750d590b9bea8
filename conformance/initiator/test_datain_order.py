"""Initiator.DataIn: a READ whose Data-In PDUs come out of offset order.

DataPDUInOrder has the OR result function (RFC 7143 13.18): only when both sides say
No may the data PDUs of a sequence come in any order; Yes keeps them at continuously
increasing offsets. The run's reference target serves profile "datain-reverse": it
answers DataPDUInOrder=No, sends Data-In of 4 KiB at most, and sends each 16 KiB
sequence at decreasing Buffer Offsets, DataSN counting in sending order (11.7.5) and F
on the PDU sent last (11.7.1). An initiator that agreed to No must place each PDU at
its Buffer Offset (11.7.6): the test writes 64 KiB, reads them back through the proxy,
and compares.

An initiator that offers (or is only able to offer) DataPDUInOrder=Yes gets in-order
data, which is its right: the test skips, naming what the initiator offered on the wire.

DataSequenceInOrder (13.19, also OR) does the same for whole sequences: profile
"dataseq-reverse" answers No and sends a READ's 16 KiB sequences last first, each in
offset order; an initiator that agreed to No must place them by Buffer Offset too.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from iscsi_conformance.core.pdu import ScsiCommand, ScsiDataIn
from iscsi_conformance.errors import ConfigError, ISCSIConformanceError
from iscsi_conformance.harness.observer import ObservedConnection, Observer
from iscsi_conformance.peers.base import LoginOptions
from iscsi_conformance.plugin import require, spec, violation

PROFILE = "datain-reverse"
SEQ_PROFILE = "dataseq-reverse"
LUN = 0
LBA = 8192
BLOCK = 512
BLOCKS = 128  # 64 KiB: four 16 KiB sequences of four Data-In PDUs each
OFFER = (("DataPDUInOrder", "No"),)
SEQ_OFFER = (("DataSequenceInOrder", "No"),)


def _login(initiator: Any, target: Any, ep: Any, profile: str, offer: Any) -> Any:
    chap, mutual = target.chap_for(profile)
    plain = LoginOptions(chap=chap, mutual_chap=mutual)
    try:
        return initiator.driver.login(ep, options=LoginOptions(chap=chap, mutual_chap=mutual,
                                                               parameters=offer))  # fmt: skip
    except ConfigError:
        # The driver cannot set the key: the initiator offers what it offers (judged below).
        return initiator.driver.login(ep, options=plain)


def _logged_in(obs: Observer) -> list[ObservedConnection]:
    return [c for c in obs if c.session_type == "Normal" and c.in_full_feature]


def _normal(obs: Observer) -> ObservedConnection:
    obs.wait_closed(3.0)
    obs.wait_quiet(0.05, 1.0)
    if obs.harness_errors:
        raise violation("harness", f"the recording proxy failed: {obs.harness_errors}")
    conns = _logged_in(obs)
    if not conns:
        raise violation("harness", "no Normal connection reached full feature phase")
    return conns[-1]


def _read_data_in(conn: ObservedConnection) -> list[ScsiDataIn]:
    """The Data-In PDUs of the last READ the initiator sent on ``conn``."""
    reads = [e.pdu for e in conn.sent_by_initiator(ScsiCommand) if e.pdu.read]  # type: ignore[union-attr]
    if not reads:
        raise violation("harness", "the initiator sent no READ through the proxy")
    itt = reads[-1].itt
    return [e.pdu for e in conn.seen_by_initiator(ScsiDataIn) if e.pdu.itt == itt]  # type: ignore[union-attr,misc]


@spec(
    "Initiator.DataIn.OutOfOrderPlaced",
    "RFC 7143 13.18",
    "RFC 7143 11.7.6",
    pairing="initiator",
    requirements=["R7143-13.18-3"],
)
def test_out_of_order_data_in_placed(initiator: Any, target: Any, observed: Any) -> None:
    """With DataPDUInOrder=No agreed, a READ whose sequences arrive at decreasing
    offsets returns exactly the data written."""
    _placed_by_offset(initiator, target, observed, PROFILE, OFFER, "R7143-13.18-3")


@spec(
    "Initiator.DataIn.SequencesOutOfOrderPlaced",
    "RFC 7143 13.19",
    "RFC 7143 11.7.6",
    pairing="initiator",
    requirements=["R7143-13.19-4"],
)
def test_out_of_order_sequences_placed(initiator: Any, target: Any, observed: Any) -> None:
    """With DataSequenceInOrder=No agreed, a READ whose 16 KiB sequences arrive last
    first returns exactly the data written."""
    _placed_by_offset(initiator, target, observed, SEQ_PROFILE, SEQ_OFFER, "R7143-13.19-4")


def _placed_by_offset(
    initiator: Any, target: Any, observed: Any, profile: str, offer: Any, row: str
) -> None:
    key = offer[0][0]
    ep, obs = observed(profile)
    payload = os.urandom(BLOCKS * BLOCK)  # no two 4 KiB pieces alike
    handle = _login(initiator, target, ep, profile, offer)
    error: ISCSIConformanceError | None = None
    data = b""
    try:
        obs.wait_for(lambda: bool(_logged_in(obs)), 5.0)
        if not _logged_in(obs):
            raise violation("harness", "the login never reached full feature phase via the proxy")
        agreed = [c.negotiated(key, "Yes") for c in _logged_in(obs)]
        if agreed != ["No"]:
            # Judged before any I/O: such an initiator gets in-order data (OR result).
            offers = [c.declared_by_initiator(key) for c in _logged_in(obs)]
            offered = offers[-1] or "nothing (default Yes)"
            pytest.skip(
                f"{initiator.name} offered {key}={offered} and negotiated "
                f"{agreed[-1]} (result function OR, RFC 7143 "
                f"{'13.18' if key == 'DataPDUInOrder' else '13.19'}): its Data-In comes in "
                "offset order"
            )
        initiator.driver.write(handle, LUN, LBA, payload)
        try:
            data = initiator.driver.read(handle, LUN, LBA, BLOCKS)
        except ISCSIConformanceError as exc:
            error = exc
    finally:
        initiator.driver.logout(handle)
    conn = _normal(obs)
    pdus = _read_data_in(conn)
    offsets = [p.buffer_offset for p in pdus]
    if offsets == sorted(offsets):
        raise violation(
            "harness",
            f"{key}=No was agreed but the target sent the READ's Data-In in offset "
            f"order ({offsets}): nothing out of order was tested",
        )
    require(
        error is None,
        row,
        f"{initiator.name} failed a READ whose Data-In came at offsets {offsets} "
        f"({key}=No agreed): {error}",
    )
    require(
        data == payload,
        row,
        f"{initiator.name} returned other data than it wrote for a READ whose Data-In came "
        f"at offsets {offsets} ({key}=No agreed): first difference at byte "
        f"{next((i for i, (a, b) in enumerate(zip(data, payload, strict=False)) if a != b), min(len(data), len(payload)))} "
        f"of {len(payload)} ({len(data)} returned)",
    )
