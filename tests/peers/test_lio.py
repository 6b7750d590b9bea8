"""LIO in its micro-VM, driven from the host by libiscsi (peers/lio.py).

The peer tests share one VM (module scope): boot about 6 s, each target configured
in one agent round trip. libiscsi runs natively on the host and logs in through the
forwarded port, so SendTargets shows the NAT case: LIO answers with its guest address.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from iscsi_conformance.errors import AuthenticationError, ConfigError
from iscsi_conformance.peers import lio as lio_mod
from iscsi_conformance.peers.base import ChapAccount, LoginOptions, LunSpec, TargetSpec
from iscsi_conformance.peers.lio import LioTarget

INI = "iqn.2024-01.org.iscsi-conformance:host-libiscsi"
CHAP = ChapAccount("lio-user", "lio-secret-0123")
MUTUAL = ChapAccount("lio-target", "lio-mutual-4567")


# --------------------------------------------------------------------------- pure


def _driver(backstore: str = "fileio") -> LioTarget:
    return LioTarget(mode="microvm", backstore=backstore)


def test_plan_demo_mode_without_auth() -> None:
    steps = _driver().plan(TargetSpec(iqn="iqn.2024-01.org.example:a"))
    verbs = [s[0] for s in steps]
    assert verbs[0] == "backstore" and verbs[-1] == "enable"
    assert ["attrib", "iqn.2024-01.org.example:a", "generate_node_acls", "1"] in steps
    assert ["attrib", "iqn.2024-01.org.example:a", "authentication", "0"] in steps
    assert ["portal", "iqn.2024-01.org.example:a", "0.0.0.0", "3260"] in steps
    assert not any(s[0] in ("acl", "auth") for s in steps)


def test_plan_acls_with_mutual_chap() -> None:
    spec = TargetSpec(
        iqn="iqn.2024-01.org.example:b",
        luns=(LunSpec(), LunSpec(size_bytes=1 << 20, block_size=4096)),
        chap=CHAP,
        mutual_chap=MUTUAL,
        allowed_initiators=(INI,),
        header_digest=("CRC32C", "None"),
        parameters=(("MaxRecvDataSegmentLength", "65536"),),
    )
    steps = _driver("ramdisk").plan(spec)
    assert ["acl", spec.iqn, INI, "0", "1"] in steps
    assert ["auth", spec.iqn, INI, CHAP.user, CHAP.secret, MUTUAL.user, MUTUAL.secret] in steps
    assert ["attrib", spec.iqn, "authentication", "1"] in steps
    assert ["param", spec.iqn, "HeaderDigest", "CRC32C,None"] in steps
    assert ["param", spec.iqn, "MaxRecvDataSegmentLength", "65536"] in steps
    assert [s for s in steps if s[0] == "backstore"][1][1:] == [
        "ramdisk",
        steps[1][2],
        str(1 << 20),
        "4096",
    ]


def test_plan_demo_mode_chap_goes_on_the_tpg() -> None:
    steps = _driver().plan(TargetSpec(iqn="iqn.2024-01.org.example:c", chap=CHAP))
    assert ["auth", "iqn.2024-01.org.example:c", "-", CHAP.user, CHAP.secret] in steps


def test_plan_rejects_what_lio_cannot_do() -> None:
    with pytest.raises(ConfigError):
        _driver().plan(
            TargetSpec(iqn="iqn.2024-01.org.example:d", parameters=(("NoSuchKey", "1"),))
        )
    with pytest.raises(ConfigError):
        _driver().plan(TargetSpec(iqn="iqn.2024-01.org.example:d", mutual_chap=MUTUAL))
    with pytest.raises(ConfigError):
        LioTarget(mode="microvm", backstore="iblock")


def test_plan_holds_erl_2_unless_the_spec_sets_it() -> None:
    # LIO answers with its ACLs' default_erl, 0 by default, which made every ERL 1 test
    # skip; ACLs take it from the TPG when they are made, so it comes first
    spec = TargetSpec(iqn="iqn.2024-01.org.example:e", allowed_initiators=(INI,))
    steps = _driver().plan(spec)
    erl = steps.index(["attrib", spec.iqn, "default_erl", "2"])
    assert erl < min(i for i, s in enumerate(steps) if s[0] == "acl")
    spec = TargetSpec(iqn="iqn.2024-01.org.example:e", parameters=(("ErrorRecoveryLevel", "0"),))
    assert ["attrib", spec.iqn, "default_erl", "0"] in _driver().plan(spec)


def test_plan_refuses_a_redirection() -> None:
    # LIO has no redirect setting (manifest: login_redirect = false)
    with pytest.raises(ConfigError):
        _driver().plan(TargetSpec(iqn="iqn.2024-01.org.example:f", redirect="127.0.0.2:3260"))


def test_mode_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lio_mod.ENV_MODE, "container")
    assert lio_mod.select_mode() == "container"
    assert lio_mod.select_mode("microvm") == "microvm"
    monkeypatch.delenv(lio_mod.ENV_MODE)
    monkeypatch.setattr(lio_mod, "host_has_lio", lambda: False)
    assert lio_mod.select_mode() == (
        "microvm" if shutil.which("qemu-system-x86_64") else "container"
    )
    with pytest.raises(ConfigError):
        lio_mod.select_mode("bogus")


# --------------------------------------------------------------------------- real LIO

HAVE = shutil.which("qemu-system-x86_64") and shutil.which("iscsi-inq") and shutil.which("iscsi-ls")
peer = pytest.mark.skipif(not HAVE, reason="needs qemu-system-x86 and libiscsi-bin")


@pytest.fixture(scope="module")
def lio():  # type: ignore[no-untyped-def]
    t = LioTarget(mode="microvm")
    started = time.monotonic()
    t.start()
    t.start_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    yield t
    t.stop()


@pytest.fixture(scope="module")
def libiscsi():  # type: ignore[no-untyped-def]
    from iscsi_conformance.peers.libiscsi import LibiscsiInitiator

    ini = LibiscsiInitiator(mode="native", initiator_name=INI)
    ini.start()
    yield ini
    ini.stop()


def _inq(url: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iscsi-inq", "-i", INI, url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@peer
@pytest.mark.peer
def test_version_names_lio_and_the_kernel(lio: LioTarget) -> None:
    assert "iSCSI Target" in lio.version()
    assert lio.kernel_release() in lio.version()
    res = lio.guest(["cat", "/sys/kernel/config/target/version"], check=True)
    assert "Target Engine Core" in res.text


@peer
@pytest.mark.peer
def test_login_without_auth_and_inquiry(lio: LioTarget) -> None:
    ep = lio.configure(TargetSpec(iqn="iqn.2024-01.org.example:lio-open"))
    try:
        started = time.monotonic()
        res = _inq(ep.url(0))
        elapsed = time.monotonic() - started
        assert res.returncode == 0, res.stderr
        assert "Vendor:LIO-ORG" in res.stdout
        assert elapsed < 30
    finally:
        lio.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_sendtargets_answers_the_guest_address(lio: LioTarget, libiscsi) -> None:  # type: ignore[no-untyped-def]
    ep = lio.configure(TargetSpec(iqn="iqn.2024-01.org.example:lio-st"))
    try:
        assert ep.host_side is not None
        found = libiscsi.discover(*ep.host_side)
        names = {name: portal for name, portal in found}
        assert ep.iqn in names
        # NAT: the portal LIO reports is the one it listens on inside the VM, not ours.
        assert names[ep.iqn].startswith("10.0.2.15:3260")
        assert lio.manifest.capabilities.get("nat_portal") is True
    finally:
        lio.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_chap_right_secret_logs_in_wrong_secret_is_refused(lio: LioTarget, libiscsi) -> None:  # type: ignore[no-untyped-def]
    ep = lio.configure(
        TargetSpec(iqn="iqn.2024-01.org.example:lio-chap", chap=CHAP, allowed_initiators=(INI,))
    )
    try:
        s = libiscsi.login(ep, options=LoginOptions(chap=CHAP))
        assert libiscsi.inquiry(s, 0)[8:16] == b"LIO-ORG "
        libiscsi.logout(s)
        with pytest.raises(AuthenticationError):
            libiscsi.login(ep, options=LoginOptions(chap=ChapAccount(CHAP.user, "not-the-secret")))
        with pytest.raises(AuthenticationError):
            libiscsi.login(ep)  # no CHAP at all: the target requires it
        logged = "\n".join(" ".join(r.argv) + r.stdout + r.stderr for r in lio.log.records)
        assert CHAP.secret not in logged
        assert "***" in logged
    finally:
        lio.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_mutual_chap(lio: LioTarget, libiscsi) -> None:  # type: ignore[no-untyped-def]
    ep = lio.configure(
        TargetSpec(
            iqn="iqn.2024-01.org.example:lio-mutual",
            chap=CHAP,
            mutual_chap=MUTUAL,
            allowed_initiators=(INI,),
        )
    )
    try:
        s = libiscsi.login(ep, options=LoginOptions(chap=CHAP, mutual_chap=MUTUAL))
        assert libiscsi.inquiry(s, 0)[8:16] == b"LIO-ORG "
        libiscsi.logout(s)
        with pytest.raises(AuthenticationError):
            bad = LoginOptions(chap=CHAP, mutual_chap=ChapAccount(MUTUAL.user, "wrong-mutual-00"))
            libiscsi.inquiry(libiscsi.login(ep, options=bad), 0)
    finally:
        lio.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
@pytest.mark.parametrize("header_digest", ["None", "CRC32C"])
def test_write_then_read_back(lio: LioTarget, libiscsi, header_digest: str) -> None:  # type: ignore[no-untyped-def]
    spec = TargetSpec(
        iqn=f"iqn.2024-01.org.example:lio-io-{header_digest.lower()}",
        luns=(LunSpec(size_bytes=8 << 20), LunSpec(size_bytes=8 << 20, block_size=4096)),
        header_digest=("CRC32C", "None") if header_digest == "CRC32C" else ("None",),
    )
    ep = lio.configure(spec)
    try:
        s = libiscsi.login(ep, options=LoginOptions(header_digest=header_digest))
        for lun, bs in ((0, 512), (1, 4096)):
            data = os.urandom(bs * 16)
            libiscsi.write(s, lun, 5, data, block_size=bs)
            assert libiscsi.read(s, lun, 5, 16, block_size=bs) == data
            assert libiscsi.read(s, lun, 0, 1, block_size=bs) == bytes(bs)  # never written
        libiscsi.logout(s)
    finally:
        lio.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_ramdisk_backstore_and_reconfigure(lio: LioTarget, libiscsi) -> None:  # type: ignore[no-untyped-def]
    old = lio.backstore
    lio.backstore = "ramdisk"
    try:
        spec = TargetSpec(iqn="iqn.2024-01.org.example:lio-rd", luns=(LunSpec(size_bytes=4 << 20),))
        lio.configure(spec)
        ep = lio.configure(spec)  # configuring the same name again replaces it
        s = libiscsi.login(ep)
        data = os.urandom(4096)
        libiscsi.write(s, 0, 0, data)
        assert libiscsi.read(s, 0, 0, 8) == data
        libiscsi.logout(s)
        lio.deconfigure(ep.iqn)
        assert "lio-rd" not in lio.guest("ls /sys/kernel/config/target/iscsi").text
    finally:
        lio.backstore = old


@peer
@pytest.mark.peer
def test_every_configuration_step_is_recorded(lio: LioTarget) -> None:
    ep = lio.configure(TargetSpec(iqn="iqn.2024-01.org.example:lio-log", chap=CHAP))
    lio.deconfigure(ep.iqn)
    scripts = [" ".join(r.argv) for r in lio.log.records if r.where.startswith("microvm:")]
    recipe = next(s for s in scripts if "lio-log" in s and "enable" in s)
    assert "/ic/lio backstore fileio" in recipe and "/ic/lio auth" in recipe
    assert CHAP.secret not in recipe
