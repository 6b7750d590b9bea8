"""The ``iscsi-conformance target`` command: bad configuration, startup line,
SIGINT flushing file LUN data and APTPL reservation state across a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from target_helpers import RawInitiator, read16, write16

from iscsi_conformance.target import cli
from iscsi_conformance.target.config import load_config

IQN = "iqn.2024-01.org.example:cli"


def _run_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "iscsi_conformance.target.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[portal_groups]]\nportals = ["127.0.0.1:0"]\n'
        '[[targets]]\nname = "iqn.2024-01.org.example:t"\n'
        '[[targets.luns]]\nlun = 0\nsize = "64M"\n'
        '[[targets.luns]]\nlun = 1\nsize = "lots"\n'
    )
    assert cli.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "targets[0].luns[1].size: must be a positive size like 64M" in err


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            '[[portal_groups]]\nportals = ["127.0.0.1:99999"]\n[[targets]]\nname="iqn.2024-01.a:b"\n',
            "portal_groups[0].portals[0]",
        ),
        (
            '[[portal_groups]]\nportals = ["127.0.0.1:1"]\n[[targets]]\nname="bogus"\n',
            "targets[0].name",
        ),
        (
            '[[portal_groups]]\nportals = ["127.0.0.1:1"]\n[[targets]]\nname="iqn.2024-01.a:b"\n[targets.parameters]\nMaxBurstLength = 1\n',
            "targets[0].parameters.MaxBurstLength",
        ),
        (
            '[[portal_groups]]\nportals = ["127.0.0.1:1"]\n[[targets]]\nname="iqn.2024-01.a:b"\n[targets.chap]\nuser="u"\n',
            "targets[0].chap.secret",
        ),
        (
            '[[portal_groups]]\nportals = ["127.0.0.1:1"]\n[[targets]]\nname="iqn.2024-01.a:b"\nportal_groups=[7]\n',
            "targets[0].portal_groups[0]",
        ),
        (
            '[[portal_groups]]\nportals = ["127.0.0.1:1"]\n[[targets]]\nname="iqn.2024-01.a:b"\n'
            '[targets.redirect]\naddress="127.0.0.2:3260,1"\n',
            "targets[0].redirect.address",
        ),
        ("this is not toml", "bad.toml"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    from iscsi_conformance.errors import ConfigError

    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert field in str(info.value)


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[portal_groups]]\nportals = ["127.0.0.1:1"]\n[[targets]]\nname="iqn.2024-01.a:b"\n'
        '[targets.chap]\nuser="u"\nsecret="very-secret-value"\n'
    )
    assert "very-secret-value" not in repr(load_config(cfg))


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "targets" / "reference" / "example.toml")
    assert cfg.targets and cfg.portal_groups


def _start(*args: str) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    proc = _run_cli(*args)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), proc.stderr.read() if proc.stderr else line
    hostport = line.split()[2]
    host, port = hostport.rsplit(":", 1)
    return proc, (host, int(port))


def _prout_register_aptpl(key: int) -> tuple[bytes, bytes]:
    """PERSISTENT RESERVE OUT, REGISTER AND IGNORE EXISTING KEY, APTPL=1 (SPC-4 6.16)."""
    cdb = bytes([0x5F, 0x06, 0x00, 0, 0, 0, 0, 0, 24, 0])
    params = bytes(8) + key.to_bytes(8, "big") + bytes(4) + bytes([0x01]) + bytes(3)
    return cdb, params


def test_sigint_flushes_file_lun_and_aptpl_state(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    proc, addr = _start("--listen", "127.0.0.1:0", "--target", IQN, "--lun", f"{disk}=4M")
    try:
        ini = RawInitiator(addr)
        assert ini.login(IQN).status == 0
        ini.clear_ua()
        payload = os.urandom(8192)
        status, _, _ = ini.scsi(write16(3, 16), write=payload)
        assert status.status == 0
        cdb, params = _prout_register_aptpl(0x1234)
        status, _, _ = ini.scsi(cdb, write=params)
        assert status.status == 0, status
        ini.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    assert disk.stat().st_size == 4 << 20
    assert (tmp_path / "disk.img.pr.json").exists()

    proc, addr = _start("--listen", "127.0.0.1:0", "--target", IQN, "--lun", str(disk))
    try:
        ini = RawInitiator(addr)
        assert ini.login(IQN).status == 0
        ini.clear_ua()
        status, data, _ = ini.scsi(read16(3, 16), read=8192)
        assert data == payload
        # PERSISTENT RESERVE IN, READ KEYS: the key registered before the restart.
        status, data, _ = ini.scsi(bytes([0x5E, 0x00, 0, 0, 0, 0, 0, 0x01, 0x00, 0]), read=256)
        assert status.status == 0
        keys = [
            int.from_bytes(data[8 + i : 16 + i], "big")
            for i in range(0, int.from_bytes(data[4:8], "big"), 8)
        ]
        assert 0x1234 in keys
        ini.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_cli_missing_file_lun_exits_2(tmp_path: Path) -> None:
    proc = _run_cli("--listen", "127.0.0.1:0", "--target", IQN, "--lun", str(tmp_path / "nope.img"))
    assert proc.wait(30) == 2
    assert proc.stderr is not None and "--lun" in proc.stderr.read()


@pytest.mark.parametrize("mode", ["embedded", "native"])
def test_reference_target_driver(mode: str) -> None:
    from iscsi_conformance.peers.base import ChapAccount, LunSpec, TargetSpec
    from iscsi_conformance.peers.reference_target import ReferenceTargetDriver

    drv = ReferenceTargetDriver(mode=mode)  # type: ignore[arg-type]
    assert drv.manifest.supports("mutual_chap")
    try:
        ep = drv.configure(
            TargetSpec(
                iqn=IQN,
                luns=(LunSpec(size_bytes=1 << 20),),
                chap=ChapAccount("u", "driver-secret-1"),
            )
        )
        ep2 = drv.configure(TargetSpec(iqn=IQN + "2"))
        assert ep.port == ep2.port
        ini = RawInitiator((ep.host, ep.port))
        assert ini.login(IQN, chap=("u", "driver-secret-1")).status == 0
        ini.close()
        ini = RawInitiator((ep.host, ep.port))
        assert ini.login(IQN + "2").status == 0
        ini.close()
        assert all(
            "driver-secret-1" not in " ".join(r.argv) + r.stdout + r.stderr for r in drv.log.records
        )
    finally:
        drv.stop()
