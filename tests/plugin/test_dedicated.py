"""The dedicated reference target instance (capability ``dedicated_instance``): its
driver options (a second portal group, discovery CHAP) reach the target configuration,
and a restart serves again on the same ports with the same state directory."""

from __future__ import annotations

import socket
from pathlib import Path

from iscsi_conformance.peers.base import ChapAccount, LunSpec, TargetSpec
from iscsi_conformance.peers.reference_target import ReferenceTargetDriver, load_manifest
from iscsi_conformance.target.config import load_config


def test_manifest_declares_dedicated_instance() -> None:
    assert load_manifest().supports("dedicated_instance")


def test_two_portal_groups_and_discovery_chap_reach_the_config(tmp_path: Path) -> None:
    drv = ReferenceTargetDriver(
        portal_groups=2, discovery_chap=ChapAccount("disc-user", "disc-secret-0123")
    )
    drv.port = 3260
    drv.ports = {1: 3260, 2: 3261}
    drv.specs["iqn.2024-01.x:d"] = TargetSpec(iqn="iqn.2024-01.x:d", luns=(LunSpec(1 << 20),))
    path = tmp_path / "target.toml"
    path.write_text(drv.config_text(), encoding="utf-8")
    cfg = load_config(path)
    assert [g.tag for g in cfg.portal_groups] == [1, 2]
    assert cfg.discovery.chap is not None and cfg.discovery.chap.user == "disc-user"
    assert "disc-secret-0123" in drv.log.secrets  # masked in the driver's log


def test_restart_serves_again_on_the_same_ports() -> None:
    drv = ReferenceTargetDriver(portal_groups=2)
    try:
        drv.configure(TargetSpec(iqn="iqn.2024-01.x:r", luns=(LunSpec(1 << 20),)))
        ports, workdir = dict(drv.ports), drv.workdir
        drv.restart()
        assert drv.ports == ports and drv.workdir == workdir
        for port in ports.values():
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    finally:
        drv.stop()
    assert workdir is not None and not workdir.exists()
