"""Portals and portal groups: IPv6, several groups, targets bound to some groups,
discovery authentication."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from target_helpers import NONE_TAG, RawInitiator

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.codes import LoginStatus
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer

A = "iqn.2024-01.org.example:group-a"
B = "iqn.2024-01.org.example:group-b"


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def two_groups(tmp_path: Path) -> Iterator[TargetServer]:
    portals_1 = ["127.0.0.1:0"] + (["[::1]:0"] if _has_ipv6() else [])
    cfg = parse_config(
        {
            "portal_groups": [
                {"tag": 1, "portals": portals_1},
                {"tag": 2, "portals": ["127.0.0.1:0"]},
            ],
            "discovery": {"chap": {"user": "disc", "secret": "discovery-secret-1"}},
            "targets": [
                {"name": A, "portal_groups": [1], "luns": [{"lun": 0, "size": "1M"}]},
                {"name": B, "portal_groups": [2], "luns": [{"lun": 0, "size": "1M"}]},
            ],
        }
    )
    srv = TargetServer(cfg)
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


def test_target_only_on_its_portal_group(two_groups: TargetServer) -> None:
    g1, g2 = two_groups.portal(1), two_groups.portal(2)
    for addr, target, ok in ((g1, A, True), (g2, A, False), (g2, B, True), (g1, B, False)):
        ini = RawInitiator(addr)
        rsp = ini.login(target)
        ini.close()
        assert (rsp.status == 0) is ok, (addr, target)
        if ok:
            tpgt = dict(T.parse_pairs(rsp.data)).get("TargetPortalGroupTag")
            assert tpgt in (None, "1" if addr == g1 else "2")


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_portal(two_groups: TargetServer) -> None:
    (v6,) = [(h, p) for h, p, t in two_groups.portals if ":" in h]
    ini = RawInitiator(v6)
    assert ini.login(A).status == 0
    ini.close()


def test_discovery_requires_chap(two_groups: TargetServer) -> None:
    ini = RawInitiator(two_groups.portal(1))
    assert ini.login(None, session_type="Discovery").status == LoginStatus.AUTH_FAILURE
    ini.close()
    ini = RawInitiator(two_groups.portal(1))
    assert (
        ini.login(None, session_type="Discovery", chap=("disc", "discovery-secret-1")).status == 0
    )
    ini.send(
        P.TextRequest(
            final=True,
            itt=ini.next_itt(),
            ttt=NONE_TAG,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
            data=T.format_pairs([("SendTargets", "All")]),
        )
    )
    pairs = T.parse_pairs(ini.recv().data)
    addrs = [v for k, v in pairs if k == "TargetAddress"]
    assert any(a.endswith(",1") for a in addrs) and any(a.endswith(",2") for a in addrs)
    ini.close()
