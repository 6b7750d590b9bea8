"""Initiator.Bidi.XdWriteRead can fail: it is run here with the reference initiator
against the reference target (embedded, loopback, profile "default"), behind the
recording proxy.

- the reference initiator as it is (R, W, EDTL the write length, the Bidirectional Read
  AHS with the read length) passes, and gets the XOR back;
- a broken copy whose AHS asks for half the read length gets half the XOR (the target
  cuts the read part and sets o) and fails R7143-11.3.4-1, naming the AHS it sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from proof_harness import ProofInitiator, ProofTarget, embedded, observers, reference_initiator

from iscsi_conformance.initiator import engine
from iscsi_conformance.plugin.spec import ConformanceViolation
from suite_modules import load_suite

SUITE = load_suite("initiator/test_bidi.py", "bidi_under_proof")


@pytest.fixture(scope="module")
def target() -> Iterator[ProofTarget]:
    with embedded(SUITE.PROFILE) as (endpoints, server):
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
    SUITE.test_bidirectional_command(initiator, target, observed)


def test_half_read_length_fails(
    initiator: ProofInitiator, target: ProofTarget, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.ScsiCommand

    def half_ahs(**kw: Any) -> Any:
        cmd = real(**kw)
        if cmd.bidi_read_length:
            cmd = dataclasses.replace(cmd, bidi_read_length=cmd.bidi_read_length // 2)
        return cmd

    monkeypatch.setattr(engine, "ScsiCommand", half_ahs)
    with pytest.raises(ConformanceViolation, match=r"R7143-11\.3\.4-1") as failed:
        SUITE.test_bidirectional_command(initiator, target, observed)
    assert "Bidirectional Read EDTL 8192" in str(failed.value)
