"""The reference initiator's InitiatorDriver (mode "embedded") against tgt."""

from __future__ import annotations

import pytest
from initiator_helpers import CHAP, TgtTargets

from iscsi_conformance.errors import LoginError
from iscsi_conformance.peers.base import ChapAccount, LoginOptions
from iscsi_conformance.peers.reference_initiator import ReferenceInitiator

pytestmark = pytest.mark.peer


def test_driver_round_trip(tgt: TgtTargets) -> None:
    with ReferenceInitiator() as drv:
        assert drv.mode == "embedded" and drv.manifest.supports("raw_mode")
        found = drv.discover(tgt.host, tgt.port)
        assert (tgt.plain.iqn, f"{tgt.host}:{tgt.port},1") in found
        h = drv.login(tgt.plain, options=LoginOptions(header_digest="CRC32C"))
        assert h.negotiated["HeaderDigest"] == "CRC32C"
        drv.write(h, 1, 10, b"\x11" * 1024)
        assert drv.read(h, 1, 10, 2) == b"\x11" * 1024
        assert drv.inquiry(h, 1)[8:11] == b"IET"
        assert ReferenceInitiator.session(h).violations == []
        drv.logout(h)
        assert [r.argv[1] for r in drv.log.records] == [
            "discover",
            "login",
            "write",
            "read",
            "inquiry",
            "logout",
        ]


def test_driver_chap_and_masking(tgt: TgtTargets) -> None:
    with ReferenceInitiator() as drv:
        h = drv.login(tgt.chap, options=LoginOptions(chap=CHAP))
        drv.logout(h)
        with pytest.raises(LoginError):
            drv.login(
                tgt.chap, options=LoginOptions(chap=ChapAccount(CHAP.user, "bad-secret-0000"))
            )
        text = "".join(" ".join(r.argv) + r.stdout + r.stderr for r in drv.log.records)
        assert CHAP.secret not in text and "bad-secret-0000" not in text
        assert drv.log.records[-1].returncode == 1
