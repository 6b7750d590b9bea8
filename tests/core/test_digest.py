"""CRC32C digests: the hardware-backed function against the RFC 3720 B.4 vectors and
against the pure-Python oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsi_conformance.core import digest

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures/pdus/rfc3720_b4_crc32c.json").read_text()
)["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_rfc3720_b4_vectors(vector: dict[str, str]) -> None:
    data, wire = bytes.fromhex(vector["data_hex"]), bytes.fromhex(vector["crc_wire"])
    assert digest.digest_bytes(data) == wire
    assert digest.crc32c(data) == int.from_bytes(wire, "little")  # LSB first on the wire
    assert digest.crc32c_reference(data) == digest.crc32c(data)
    assert digest.read_digest(b"xx" + wire, 2) == digest.crc32c(data)


def test_the_five_vectors_are_there() -> None:
    assert len(VECTORS) == 5


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=300), split=st.integers(0, 300))
def test_hardware_matches_oracle_and_continues(data: bytes, split: int) -> None:
    crc = digest.crc32c(data)
    assert crc == digest.crc32c_reference(data)
    a, b = data[:split], data[split:]
    assert digest.crc32c(b, digest.crc32c(a)) == crc
    assert digest.crc32c_reference(b, digest.crc32c_reference(a)) == crc


def test_accepts_memoryview_and_bytearray() -> None:
    data = bytearray(range(100))
    assert digest.crc32c(memoryview(data)[10:50]) == digest.crc32c(bytes(data[10:50]))
