"""Initiator.DataIn.OutOfOrderPlaced can fail: it is run here with the reference
initiator against the reference target's real "datain-reverse" profile (configured
through its driver, embedded, loopback), behind the recording proxy.

- the reference initiator as it is (Data-In placed by Buffer Offset) passes;
- a broken copy that places each Data-In PDU where the previous one ended (arrival
  order) returns other data and fails R7143-13.18-3;
- an initiator that does not offer DataPDUInOrder=No skips, naming its offer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from proof_harness import ProofInitiator, ProofTarget, embedded, observers, reference_initiator

from iscsi_conformance.bridge.judge import Judge
from iscsi_conformance.core.pdu import ScsiDataIn
from iscsi_conformance.initiator import engine
from iscsi_conformance.initiator.engine import InitiatorConnection
from iscsi_conformance.plugin.spec import ConformanceViolation
from suite_modules import load_suite

SUITE = load_suite("initiator/test_datain_order.py", "datain_order_under_proof")
PROFILE = SUITE.PROFILE


@pytest.fixture(scope="module")
def target() -> Iterator[ProofTarget]:
    with embedded(PROFILE, SUITE.SEQ_PROFILE) as (endpoints, server):
        yield ProofTarget(endpoints, server)


@pytest.fixture
def observed(target: ProofTarget) -> Iterator[Any]:
    yield from observers(target)


@pytest.fixture
def initiator() -> Iterator[ProofInitiator]:
    yield from reference_initiator()


def test_reference_initiator_passes(
    initiator: ProofInitiator, target: ProofTarget, observed: Any
) -> None:
    SUITE.test_out_of_order_data_in_placed(initiator, target, observed)
    # The reversed stream is itself conformant: the bridge's passive rules (DataSN in
    # sending order, F and status placement, burst sizes) find nothing on either side.
    (obs,) = observed.observers
    for conn in obs:
        judge = Judge(label=f"connection {conn.index}")
        for entry in conn.entries:
            if entry.pdu is not None:
                judge.pdu(entry.direction, entry.pdu, entry.raw)
        assert judge.breaches == [], judge.breaches
        assert {"datasn.datain", "datain.burst", "datain.s_needs_f"} <= judge.exercised


def test_arrival_order_placement_fails(
    initiator: ProofInitiator, target: ProofTarget, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = InitiatorConnection._on_data_in

    def arrival_order(self: InitiatorConnection, pdu: Any, events: list[Any]) -> None:
        task = self.tasks.get(pdu.itt)
        if task is not None:  # where the previous PDU ended, whatever the Buffer Offset says
            pdu = dataclasses.replace(pdu, buffer_offset=task.data_in_bytes)
        place(self, pdu, events)

    monkeypatch.setitem(engine._HANDLERS, ScsiDataIn, arrival_order)
    with pytest.raises(ConformanceViolation, match=r"R7143-13\.18-3") as failed:
        SUITE.test_out_of_order_data_in_placed(initiator, target, observed)
    assert "returned other data than it wrote" in str(failed.value)


def test_an_initiator_offering_yes_skips(
    initiator: ProofInitiator, target: ProofTarget, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SUITE, "OFFER", (("DataPDUInOrder", "Yes"),))
    with pytest.raises(pytest.skip.Exception, match="offered DataPDUInOrder=Yes"):
        SUITE.test_out_of_order_data_in_placed(initiator, target, observed)


def test_sequences_reference_initiator_passes(
    initiator: ProofInitiator, target: ProofTarget, observed: Any
) -> None:
    SUITE.test_out_of_order_sequences_placed(initiator, target, observed)


def test_sequences_arrival_order_placement_fails(
    initiator: ProofInitiator, target: ProofTarget, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = InitiatorConnection._on_data_in

    def arrival_order(self: InitiatorConnection, pdu: Any, events: list[Any]) -> None:
        task = self.tasks.get(pdu.itt)
        if task is not None:
            pdu = dataclasses.replace(pdu, buffer_offset=task.data_in_bytes)
        place(self, pdu, events)

    monkeypatch.setitem(engine._HANDLERS, ScsiDataIn, arrival_order)
    with pytest.raises(ConformanceViolation, match=r"R7143-13\.19-4") as failed:
        SUITE.test_out_of_order_sequences_placed(initiator, target, observed)
    assert "returned other data than it wrote" in str(failed.value)


def test_sequences_an_initiator_offering_yes_skips(
    initiator: ProofInitiator, target: ProofTarget, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SUITE, "SEQ_OFFER", (("DataSequenceInOrder", "Yes"),))
    with pytest.raises(pytest.skip.Exception, match="offered DataSequenceInOrder=Yes"):
        SUITE.test_out_of_order_sequences_placed(initiator, target, observed)
