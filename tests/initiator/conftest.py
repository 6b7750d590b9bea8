"""Fixtures for the reference initiator's tests: a native tgtd on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from initiator_helpers import CHAP, MUTUAL_IN, MUTUAL_OUT, PREFIX, TgtTargets

from iscsi_conformance.peers.base import LunSpec, TargetSpec


@pytest.fixture(scope="session")
def tgt() -> Iterator[TgtTargets]:
    if shutil.which("tgtd") is None or shutil.which("tgtadm") is None:
        pytest.skip("tgt (tgtd/tgtadm) is not installed")
    from iscsi_conformance.peers.tgt import TgtTarget

    driver = TgtTarget(mode="native")
    driver.start()
    try:
        lun = (LunSpec(size_bytes=16 * 1024 * 1024),)
        digests = ("CRC32C", "None")  # tgt keeps its first value as its preference
        targets = TgtTargets(
            driver=driver,
            plain=driver.configure(
                TargetSpec(
                    iqn=f"{PREFIX}:plain", luns=lun, header_digest=digests, data_digest=digests
                )
            ),
            chap=driver.configure(TargetSpec(iqn=f"{PREFIX}:chap", luns=lun, chap=CHAP)),
            mutual=driver.configure(
                TargetSpec(iqn=f"{PREFIX}:mutual", luns=lun, chap=MUTUAL_IN, mutual_chap=MUTUAL_OUT)
            ),
            small=driver.configure(
                TargetSpec(
                    iqn=f"{PREFIX}:small",
                    luns=lun,
                    parameters=(
                        ("MaxRecvDataSegmentLength", "1024"),
                        ("MaxBurstLength", "16384"),
                        ("FirstBurstLength", "4096"),
                    ),
                )
            ),
        )
        yield targets
    finally:
        driver.stop()
